// hq-gateway operations view: every active conversation of the cluster, live, from the admin API.
//
// GET /api/v1/admin/conversations (every page) every 2 s; DELETE …/{id}/viewers ends a conversation's
// viewers on every gateway process. No inline script or style (the page's CSP forbids both).

const BASE = new URL("..", import.meta.url); // the gateway root, also behind a path prefix
const POLL_MS = 2000;
const MAX_PAGES = 20; // at most 20 x 1000 conversations shown
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (value !== null && value !== undefined) node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function age(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms ago`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s ago`;
  return `${Math.round(ms / 60_000)} min ago`;
}

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class OpsView {
  constructor() {
    this.rows = [];
    this.busy = false;
    this.polls = 0;
  }

  init() {
    this.refresh();
    setInterval(() => this.refresh(), POLL_MS);
    $("token").addEventListener("change", () => this.refresh());
  }

  status(state, text) {
    $("ops-status").dataset.state = state;
    $("ops-status-text").textContent = text;
  }

  async fetchAll() {
    const rows = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page++) {
      const url = new URL("api/v1/admin/conversations", BASE);
      url.searchParams.set("limit", "1000");
      if (cursor) url.searchParams.set("cursor", cursor);
      const res = await fetch(url, { headers: headers() });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${body.message ?? res.statusText}`);
      rows.push(...body.conversations);
      cursor = body.next;
      if (!cursor) break;
    }
    return rows;
  }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      this.rows = await this.fetchAll();
      this.polls += 1;
      this.render();
      this.status("live", "Live");
    } catch (err) {
      const text = String(err.message ?? err);
      this.status("failed", text);
      if (/HTTP 40[13]/.test(text)) document.querySelector("details.auth").open = true;
    } finally {
      this.busy = false;
    }
  }

  render() {
    const body = $("ops-rows");
    body.replaceChildren(...this.rows.map((row) => this.renderRow(row)));
    $("ops-empty").hidden = this.rows.length > 0;
    $("ops-conversations").textContent = String(this.rows.length);
    $("ops-viewers").textContent = String(this.rows.reduce((n, r) => n + r.viewers, 0));
    $("ops-updated").textContent = new Date().toISOString().slice(11, 19);
  }

  renderRow(row) {
    const u = row.upstream;
    const transports = Object.entries(row.byTransport).map(([t, n]) => `${t} ${n}`).join(", ");
    const link = el("a", { href: `../console?conversation=${encodeURIComponent(row.conversationId)}` }, row.conversationId);
    const button = el("button", { type: "button", className: "secondary small", textContent: "Disconnect viewers",
      disabled: row.viewers === 0, title: "End every viewer of this conversation on every gateway process" });
    button.addEventListener("click", () => this.disconnect(row.conversationId, button));
    const journal = row.journal.newest === null ? "—" : `${row.journal.oldest}…${row.journal.newest}`;
    const turn = row.turn.number === null ? "—" : `${row.turn.number}${row.turn.running ? " (running)" : ""}`;
    return el("tr", { className: "ops-row", dataset: { conversation: row.conversationId, viewers: String(row.viewers),
      state: u.state } },
      el("td", {}, link),
      el("td", { className: "ops-viewers", title: transports || "nobody" }, `${row.viewers}${transports ? ` (${transports})` : ""}`),
      el("td", { className: "ops-state", dataset: { state: u.state } }, u.state),
      el("td", { className: "ops-holder" }, u.holder ?? "—"),
      el("td", { className: "ops-reconnects" }, String(u.reconnects)),
      el("td", { className: "ops-last-event" }, age(u.lastEventAgeMs)),
      el("td", { className: "ops-since" }, u.connectedSince ? u.connectedSince.slice(11, 19) : "—"),
      el("td", { className: "ops-journal" }, journal),
      el("td", { className: "ops-turn" }, turn),
      el("td", { className: "ops-ttft" }, row.turn.ttftMs === null ? "—" : `${row.turn.ttftMs} ms`),
      el("td", {}, button),
    );
  }

  async disconnect(id, button) {
    if (!window.confirm(`End every viewer of ${id} on every gateway process?`)) return;
    button.disabled = true;
    const url = new URL(`api/v1/admin/conversations/${encodeURIComponent(id)}/viewers`, BASE);
    try {
      const res = await fetch(url, { method: "DELETE", headers: headers() });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${body.message ?? res.statusText}`);
      this.status("live", `Disconnected ${body.disconnected} viewer(s) on this process; the others follow within seconds`);
    } catch (err) {
      this.status("failed", `disconnect failed: ${err.message ?? err}`);
    }
    this.refresh();
  }
}

const view = new OpsView();
view.init();
window.hqOps = view; // for the browser test and devtools
