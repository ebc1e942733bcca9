// hq-gateway live console: watch one conversation's envelopes over SSE or STOMP (SockJS), submit turns.
//
// It uses only the public endpoints any client uses, so it doubles as a live example:
//   SSE    GET  api/v1/conversation/stream/{id}    resume: Last-Event-ID; late join: ?snapshot=turn
//   STOMP  SockJS at ws-convengine, SUBSCRIBE /topic/convengine/audit/{id}
//                                                  resume: since-seq header; late join: snapshot:turn
//   REST   POST api/v1/conversation/message
// The resume cursor is the envelope's seq (SSE id:, STOMP seq header, auditId / verbose.verboseId).
//
// SSE is read with fetch() rather than EventSource: EventSource dispatches only event names it has a
// listener for (stages are open-ended: HQ_* for unknown HQ events) and hides HTTP errors (a 401 or 400
// is just "error"). The resume is the same: Last-Event-ID = the last seq seen, sent on every reconnect.
//
// @stomp/stompjs and sockjs-client come from console/package-lock.json via `make vendor` (no CDN).

const BASE = new URL("..", import.meta.url); // the gateway root, also behind a path prefix
const VENDOR = [new URL("vendor/sockjs.min.js", import.meta.url), new URL("vendor/stomp.umd.min.js", import.meta.url)];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_LOG = 1000; // envelope log entries kept in the page
const MAX_ACTIVITY = 200;
const SSE_IDLE_MS = 45_000; // no byte (keepalives count) for this long: the stream is dead
const BACKOFF_MS = [500, 10_000]; // initial, cap (full jitter)
const WATCHERS_POLL_MS = 2000;

// ---------------------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);

function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only (https, localhost)
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Create an element: el("td", {className: "x", dataset: {a: 1}}, "text", child, ...). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

const clock = (date = new Date()) => date.toISOString().slice(11, 23);
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
const backoff = (attempt) => Math.round(Math.random() * Math.min(BACKOFF_MS[1], BACKOFF_MS[0] * 2 ** (attempt - 1)));
const msBetween = (a, b) => (a && b ? Date.parse(b) - Date.parse(a) : null);

function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** The seq of an envelope: auditId for AUDIT, verbose.verboseId for VERBOSE. */
const seqOf = (env) => env.auditId ?? env.verbose?.verboseId ?? null;

// ---------------------------------------------------------------------------------------------------
// The conversation model: envelopes in, turns out. No DOM here.

function newTurn(number, createdAt) {
  return {
    number, state: "RUNNING", startedAt: createdAt, endedAt: null, durationMs: null, userInput: null,
    status: null, hint: null, tools: new Map(), assembled: "", deltas: 0, final: null, usage: null,
    errors: [], other: [], partial: false, fromSnapshot: false, lastSeq: null,
  };
}

class Conversation {
  constructor(id) {
    this.id = id;
    this.lastSeq = null; // the resume position
    this.turns = new Map();
    this.notices = [];
    this.envelopes = 0;
    this.duplicates = 0;
    this.changed = new Set(); // turn numbers to re-render
  }

  /** The resume is not exact (stale expired/ahead): the replay restarts at the oldest kept envelope. */
  acceptReplay() {
    this.lastSeq = null;
  }

  turn(number, createdAt, { create = true } = {}) {
    let t = this.turns.get(number);
    if (!t && create) {
      t = newTurn(number, createdAt);
      t.partial = true; // joined mid-turn: what came before is not known
      this.turns.set(number, t);
    }
    if (t) this.changed.add(number);
    return t;
  }

  /** Apply one envelope; false when its seq was already seen (never expected: counted, not applied). */
  apply(env, seq) {
    if (seq !== null && this.lastSeq !== null && seq <= this.lastSeq) {
      this.duplicates += 1;
      return false;
    }
    if (seq !== null) this.lastSeq = seq;
    this.envelopes += 1;
    const payload = env.payload ?? {};
    const meta = payload._meta ?? {};
    const number = Number(meta.turn ?? payload.turn ?? 0);
    const at = env.createdAt;

    if (env.stage === "TURN_SNAPSHOT") {
      if (payload.turn) this.applySnapshot(payload, at, seq);
      return true;
    }
    if (env.eventType === "VERBOSE") {
      this.applyVerbose(env, number, at, seq);
      return true;
    }
    if (!number) {
      this.notices.push({ level: "info", text: `${env.stage} (no turn)`, at });
      return true;
    }
    let t;
    if (env.stage === "USER_INPUT") {
      t = newTurn(number, at);
      t.userInput = payload.message ?? "";
      this.turns.set(number, t);
      this.changed.add(number);
    } else {
      t = this.turn(number, at);
    }
    t.lastSeq = seq;
    if (meta.state) t.state = meta.state;
    switch (env.stage) {
      case "USER_INPUT":
        break;
      case "MCP_TOOL_CALL": {
        const id = String(payload.id ?? `seq-${seq}`);
        t.tools.set(id, { id, name: payload.name ?? meta.toolCode ?? "?", args: payload.args_summary ?? null,
                          status: "running", startedAt: at, endedAt: null, summary: null });
        break;
      }
      case "MCP_TOOL_RESULT":
      case "MCP_TOOL_ERROR": {
        const id = String(payload.id ?? `seq-${seq}`);
        const tool = t.tools.get(id) ?? { id, name: "?", args: null, startedAt: null };
        tool.status = env.stage === "MCP_TOOL_ERROR" || payload.is_error ? "error" : "done";
        tool.endedAt = at;
        tool.summary = payload.summary ?? payload.error ?? null;
        t.tools.set(id, tool);
        break;
      }
      case "ASSISTANT_OUTPUT_DELTA":
        t.assembled += payload.text ?? "";
        t.deltas += meta.coalesced?.count ?? 1;
        break;
      case "ASSISTANT_OUTPUT":
        t.final = payload.text ?? "";
        if (payload.duration_ms !== undefined) t.durationMs = payload.duration_ms;
        break;
      case "TOKEN_USAGE":
        t.usage = payload;
        break;
      case "ENGINE_RETURN":
        t.endedAt = at;
        if (t.durationMs === null) t.durationMs = msBetween(t.startedAt, at);
        if (t.state === "RUNNING") t.state = t.errors.length ? "FAILED" : "COMPLETED";
        break;
      default: {
        const { _meta, ...rest } = payload;
        const brief = rest.title ?? rest.name ?? rest.message ?? rest.text ?? rest.kind ?? "";
        t.other.push({ stage: env.stage, brief: String(brief), at });
      }
    }
    return true;
  }

  applyVerbose(env, number, at, seq) {
    const v = env.verbose ?? env.payload?.verbose ?? {};
    const text = v.text ?? env.payload?.message ?? "";
    const upstream = v.determinant === "UPSTREAM_ERROR" || v.determinant === "UPSTREAM_RESTORED";
    if (upstream || !number) {
      const level = v.eventType === "VERBOSE_ERROR" ? "error" : "info";
      this.notices.push({ level, text: `${v.determinant ?? v.eventType}: ${text}`, at });
      if (!number) return;
    }
    const t = this.turn(number, at);
    t.lastSeq = seq;
    if (v.state) t.state = v.state;
    if (v.eventType === "VERBOSE_ERROR") {
      t.errors.push({ text, determinant: v.determinant, recoverable: env.payload?.recoverable ?? null, at });
    } else if (v.determinant === "AGENT_ACTIVE") {
      t.hint = text;
    } else if (!upstream) {
      t.status = text;
    }
  }

  applySnapshot(s, at, seq) {
    const t = newTurn(s.turn, s.startedAt ?? at);
    t.fromSnapshot = true;
    t.state = s.state ?? (s.running ? "RUNNING" : "COMPLETED");
    t.userInput = s.userInput ?? null;
    t.assembled = s.reply ?? "";
    if (!s.running && s.reply) t.final = s.reply;
    t.status = s.status ?? null;
    t.usage = s.usage ?? null;
    if (s.error) t.errors.push({ text: s.error.message ?? JSON.stringify(s.error), determinant: "TURN_ERROR", at });
    for (const tool of s.tools ?? []) {
      t.tools.set(String(tool.id), { id: String(tool.id), name: tool.name, args: tool.argsSummary ?? null,
                                      status: tool.status, startedAt: tool.startedAt, endedAt: tool.endedAt,
                                      summary: tool.summary ?? null });
    }
    t.lastSeq = seq;
    this.turns.set(s.turn, t);
    this.changed.add(s.turn);
  }
}

// ---------------------------------------------------------------------------------------------------
// SSE over fetch: spec line parsing (WHATWG HTML §9.2), Last-Event-ID resume, retry:, idle timeout.

function sseParser(onEvent, onComment) {
  let buf = "";
  let data = [];
  let event = "";
  let id = "";
  return function feed(chunk) {
    buf += chunk;
    let start = 0;
    const eol = /\r\n|\r|\n/g;
    for (;;) {
      eol.lastIndex = start;
      const m = eol.exec(buf);
      if (!m || (m[0] === "\r" && m.index === buf.length - 1)) break; // a lone \r may be half of \r\n
      const line = buf.slice(start, m.index);
      start = m.index + m[0].length;
      if (line === "") {
        if (data.length) onEvent({ event: event || "message", data: data.join("\n"), id });
        data = [];
        event = "";
      } else if (line[0] === ":") {
        onComment(line.slice(1).trim());
      } else {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value[0] === " ") value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id" && !value.includes("\0")) id = value;
        else if (field === "retry" && /^\d+$/.test(value)) onEvent({ event: "retry", data: value, id });
      }
    }
    buf = buf.slice(start);
  };
}

class SseTransport {
  constructor(opts) {
    this.o = opts; // {conversationId, token, snapshot, cursor(), onEnvelope, onStale, onState, log}
    this.stopped = false;
    this.ctrl = null;
    this.retryMs = null;
    this.connects = 0;
  }

  get label() { return "SSE"; }

  start() { this.loop(); }

  stop() {
    this.stopped = true;
    this.ctrl?.abort();
  }

  drop() {
    this.o.log("warn", "dropping the connection (as a network failure would)");
    this.ctrl?.abort();
  }

  async loop() {
    let attempt = 0;
    while (!this.stopped) {
      const ctrl = (this.ctrl = new AbortController());
      const url = new URL(`api/v1/conversation/stream/${encodeURIComponent(this.o.conversationId)}`, BASE);
      const headers = { Accept: "text/event-stream" };
      const cursor = this.o.cursor();
      if (cursor !== null) headers["Last-Event-ID"] = String(cursor);
      else if (this.o.snapshot) url.searchParams.set("snapshot", "turn");
      if (this.o.token) headers.Authorization = `Bearer ${this.o.token}`;
      this.o.onState(this.connects ? "reconnecting" : "connecting");
      const how = cursor !== null ? `Last-Event-ID: ${cursor}` : this.o.snapshot ? "?snapshot=turn" : "live only";
      this.o.log("info", `GET ${url.pathname}${url.search} (${how})`);
      let fatal = false;
      try {
        const res = await fetch(url, { headers, signal: ctrl.signal, cache: "no-store" });
        if (!res.ok) {
          const text = await res.text();
          let message = text;
          try { message = JSON.parse(text).message ?? text; } catch { /* not JSON */ }
          this.o.log("error", `HTTP ${res.status}: ${message}`);
          fatal = res.status >= 400 && res.status < 500 && res.status !== 429 && res.status !== 408;
          if (fatal) this.o.onState("failed", `HTTP ${res.status}: ${message}`);
        } else {
          this.connects += 1;
          attempt = 0;
          this.o.onState("live", cursor !== null ? `resumed after seq ${cursor}` : "");
          fatal = await this.read(res.body, ctrl);
          if (!fatal && !this.stopped && !ctrl.signal.aborted) this.o.log("warn", "the server ended the stream");
        }
      } catch (err) {
        if (!this.stopped && !ctrl.signal.aborted) this.o.log("error", `stream failed: ${err.message ?? err}`);
      }
      if (this.stopped || fatal) break;
      attempt += 1;
      const delay = this.retryMs ?? backoff(attempt);
      this.o.onState("reconnecting", `in ${formatMs(delay)}`);
      await sleep(delay, this.stopSignal());
    }
    this.ctrl = null;
    if (this.stopped) this.o.onState("idle");
  }

  stopSignal() {
    // A sleep ends early only on stop(): a fresh controller whose abort follows this.stopped.
    const ctrl = (this.ctrl = new AbortController());
    return ctrl.signal;
  }

  /** Read one response body until it ends or is aborted; true when the viewer must not reconnect. */
  async read(body, ctrl) {
    let fatal = false;
    let idle = setTimeout(() => ctrl.abort(), SSE_IDLE_MS);
    const feed = sseParser(
      (ev) => {
        if (ev.event === "retry") { this.retryMs = Number(ev.data); return; }
        let data;
        try { data = JSON.parse(ev.data); } catch {
          this.o.log("error", `unparsable ${ev.event} event: ${ev.data.slice(0, 120)}`);
          return;
        }
        if (ev.event === "stale") this.o.onStale(data);
        else if (ev.event === "error") {
          this.o.log("error", `server: ${data.error}: ${data.message}`);
          // Told why, and not for a reconnect to undo: an expired token, an operator's disconnect.
          if (data.error === "token_expired" || data.error === "disconnected_by_admin") {
            fatal = true;
            this.o.onState("failed", `${data.error}: ${data.message}`);
          }
        } else this.o.onEnvelope(data, ev.id ? Number(ev.id) : seqOf(data), ev.event);
      },
      () => {},
    );
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    ctrl.signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(idle);
        idle = setTimeout(() => { this.o.log("warn", `no byte for ${SSE_IDLE_MS / 1000} s`); ctrl.abort(); }, SSE_IDLE_MS);
        feed(value);
        if (fatal) break;
      }
    } finally {
      clearTimeout(idle);
    }
    return fatal;
  }
}

// ---------------------------------------------------------------------------------------------------
// STOMP over SockJS with @stomp/stompjs: since-seq on every (re-)SUBSCRIBE, snapshot:turn on a fresh join.

let vendorLoaded = null;
const ESCAPES = { c: ":", n: "\n", r: "\r", "\\": "\\" };

function loadScript(url) {
  return new Promise((resolve, reject) => {
    const s = el("script", { src: url.href, async: false });
    s.addEventListener("load", resolve, { once: true });
    s.addEventListener("error", () => reject(new Error(`${url.pathname} did not load`)), { once: true });
    document.head.append(s);
  });
}

function loadVendor() {
  vendorLoaded ??= Promise.all(VENDOR.map(loadScript)).then(() => {
    if (!window.SockJS || !window.StompJs?.Client) throw new Error("SockJS / StompJs globals missing");
  });
  return vendorLoaded;
}

class StompTransport {
  constructor(opts) {
    this.o = opts; // as SseTransport, plus sockjsTransport
    this.client = null;
    this.socket = null;
    this.connects = 0;
    this.receipts = 0;
  }

  get label() {
    const t = this.socket?.transport;
    return `STOMP · SockJS${t ? ` ${t}` : ""}`;
  }

  start() {
    const { Client } = window.StompJs;
    const destination = `/topic/convengine/audit/${this.o.conversationId}`;
    const sockUrl = new URL("ws-convengine", BASE).href;
    const connectHeaders = this.o.token ? { Authorization: `Bearer ${this.o.token}` } : {};
    this.client = new Client({
      webSocketFactory: () => {
        const opts = this.o.sockjsTransport ? { transports: [this.o.sockjsTransport] } : undefined;
        this.socket = new window.SockJS(sockUrl, null, opts);
        return this.socket;
      },
      connectHeaders,
      reconnectDelay: 1000,
      heartbeatIncoming: 10_000,
      heartbeatOutgoing: 10_000,
      debug: () => {},
      beforeConnect: () => {
        this.o.onState(this.connects ? "reconnecting" : "connecting");
        this.o.log("info", `SockJS ${sockUrl}${this.o.sockjsTransport ? ` (${this.o.sockjsTransport})` : ""}`);
      },
      onConnect: (frame) => {
        this.connects += 1;
        const h = frame.headers;
        this.o.log("info", `CONNECTED version ${h.version}, heart-beat ${h["heart-beat"]}, over ${this.socket?.transport}`);
        const headers = { id: "console" };
        const cursor = this.o.cursor();
        if (cursor !== null) headers["since-seq"] = String(cursor);
        else if (this.o.snapshot) headers.snapshot = "turn";
        const receipt = (headers.receipt = `sub-${++this.receipts}`);
        this.client.watchForReceipt(receipt, () => {
          this.o.onState("live", cursor !== null ? `resumed after seq ${cursor}` : "");
        });
        const how = cursor !== null ? `since-seq: ${cursor}` : this.o.snapshot ? "snapshot: turn" : "live only";
        this.o.log("info", `SUBSCRIBE ${destination} (${how})`);
        this.client.subscribe(destination, (m) => this.onMessage(m), headers);
      },
      onStompError: (frame) => {
        // stompjs leaves STOMP 1.2 header escapes in an ERROR that answers CONNECT (no version agreed yet).
        const message = (frame.headers.message ?? "ERROR").replace(/\\([cnr\\])/g, (_, c) => ESCAPES[c]);
        this.o.log("error", `STOMP ERROR: ${message}${frame.body ? ` — ${frame.body}` : ""}`);
        if (!/resume with since-seq/.test(message)) {
          this.o.onState("failed", message); // refused (auth, destination): retrying would not help
          this.client.deactivate();
        }
      },
      onWebSocketClose: (evt) => {
        if (!this.client?.active) return;
        this.o.log("warn", `socket closed (${evt?.code ?? "?"}${evt?.reason ? ` ${evt.reason}` : ""}); reconnecting`);
        this.o.onState("reconnecting", "in 1 s");
      },
    });
    this.client.activate();
  }

  onMessage(m) {
    const seq = m.headers.seq !== undefined ? Number(m.headers.seq) : null;
    if (m.headers.stale) {
      const parts = Object.fromEntries(m.headers.stale.split(",").map((kv) => kv.split("=")));
      this.o.onStale({ ...parts, oldest: Number(parts.oldest), newest: Number(parts.newest) });
    }
    let env;
    try { env = JSON.parse(m.body); } catch {
      this.o.log("error", `MESSAGE seq ${seq}: body is not JSON`);
      return;
    }
    this.o.onEnvelope(env, seq ?? seqOf(env), env.stage);
  }

  stop() {
    const c = this.client;
    this.client = null;
    c?.deactivate().then(() => this.o.onState("idle"));
  }

  drop() {
    this.o.log("warn", "dropping the connection (as a network failure would)");
    this.client?.forceDisconnect();
  }
}

// ---------------------------------------------------------------------------------------------------
// Rendering

const STAGE_KIND = {
  USER_INPUT: "user", MCP_TOOL_CALL: "tool", MCP_TOOL_RESULT: "tool", MCP_TOOL_ERROR: "error",
  ASSISTANT_OUTPUT_DELTA: "output", ASSISTANT_OUTPUT: "output", TOKEN_USAGE: "usage", ENGINE_RETURN: "done",
  TURN_SNAPSHOT: "snapshot", VERBOSE_ERROR: "error", VERBOSE_PROGRESS: "progress",
};

function renderTurn(t) {
  const running = t.state === "RUNNING";
  const head = el("header", { className: "turn-head" },
    el("h3", {}, `Turn ${t.number}`),
    el("span", { className: "pill", dataset: { state: t.state } }, t.state),
    t.fromSnapshot ? el("span", { className: "tag" }, "from snapshot") : null,
    el("span", { className: "turn-time", title: "turn duration" },
      t.durationMs !== null ? formatMs(t.durationMs) : running ? "running…" : ""));
  const li = el("li", { className: "turn", dataset: { turn: t.number, state: t.state }, ariaBusy: String(running) }, head);
  if (t.partial && !t.fromSnapshot) {
    li.append(el("p", { className: "help" }, "Joined mid-turn: earlier envelopes are not shown (try “Snapshot on join”)."));
  }
  if (t.userInput !== null) li.append(el("p", { className: "user-input" }, el("span", { className: "who" }, "User"), t.userInput));
  if (t.status && running) li.append(el("p", { className: "caption", role: "status" }, el("span", { className: "spinner", ariaHidden: "true" }), t.status));
  else if (t.status) li.append(el("p", { className: "caption done" }, `Last status: ${t.status}`));
  if (t.hint) li.append(el("p", { className: "hint" }, `agent: ${t.hint}`));

  if (t.tools.size) {
    const rows = [...t.tools.values()].map((tool) =>
      el("tr", { className: "tool", dataset: { status: tool.status, name: tool.name } },
        el("td", { className: "tool-name" }, el("code", {}, tool.name)),
        el("td", { className: "tool-args" }, tool.args ?? ""),
        el("td", {}, el("span", { className: "pill", dataset: { state: tool.status } }, tool.status)),
        el("td", { className: "num tool-duration" }, tool.endedAt ? formatMs(msBetween(tool.startedAt, tool.endedAt)) : "…"),
        el("td", { className: "tool-summary" }, tool.summary ?? "")));
    li.append(el("table", { className: "tools" },
      el("caption", {}, `Tool calls (${t.tools.size})`),
      el("thead", {}, el("tr", {}, ...["Tool", "Arguments", "Status", "Duration", "Result"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)));
  }

  const text = t.final ?? t.assembled;
  if (text || t.deltas || t.final !== null) {
    const reply = el("div", { className: "reply", dataset: { final: String(t.final !== null) } },
      el("span", { className: "who" }, "Assistant"), el("span", { className: "reply-text" }, text));
    if (running && t.final === null) reply.append(el("span", { className: "cursor", ariaHidden: "true" }, "▍"));
    li.append(reply);
    let check = `${t.deltas} delta${t.deltas === 1 ? "" : "s"}`;
    let mismatch = false;
    if (t.final !== null && t.deltas) {
      mismatch = t.assembled !== t.final;
      check += mismatch ? " · assembled text differs from the final text" : " · assembled text matches the final text";
    } else if (t.final !== null && t.fromSnapshot) {
      check = "reply from the turn snapshot";
    }
    li.append(el("p", { className: `reply-meta${mismatch ? " warn" : ""}`, dataset: { match: String(!mismatch) } }, check));
  }

  if (t.usage) {
    const u = t.usage;
    const item = (k, v) => (v === undefined || v === null ? null : el("div", {}, el("dt", {}, k), el("dd", {}, String(v))));
    li.append(el("dl", { className: "usage", ariaLabel: "Token usage" },
      item("model", u.model), item("input tokens", u.input_tokens), item("output tokens", u.output_tokens),
      item("cost", u.cost_usd !== undefined ? `$${Number(u.cost_usd).toFixed(6)}` : null)));
  }
  for (const e of t.errors) {
    const rec = e.recoverable === true ? " (recoverable)" : e.recoverable === false ? " (not recoverable)" : "";
    li.append(el("p", { className: "error", role: "alert" }, el("strong", {}, e.determinant ?? "ERROR"), `${rec}: ${e.text}`));
  }
  if (t.other.length) {
    li.append(el("ul", { className: "other" }, ...t.other.map((o) => el("li", {}, el("code", {}, o.stage), o.brief ? ` ${o.brief}` : ""))));
  }
  return li;
}

function logEntry(env, seq, transport) {
  const kind = STAGE_KIND[env.verbose?.eventType] ?? STAGE_KIND[env.stage] ?? "other";
  const stage = env.eventType === "VERBOSE" ? env.verbose?.eventType ?? "VERBOSE" : env.stage;
  const p = env.payload ?? {};
  const brief = env.verbose?.text ?? p.text ?? p.message ?? p.name ?? p.summary ?? "";
  const coalesced = p._meta?.coalesced ? ` ⟨${p._meta.coalesced.count} merged⟩` : "";
  const pre = el("pre", {});
  const details = el("details", {},
    el("summary", {},
      el("span", { className: "seq" }, seq ?? "—"),
      el("span", { className: "stage", dataset: { kind } }, stage),
      el("span", { className: "brief" }, String(brief).slice(0, 80) + coalesced),
      el("time", { className: "t", title: `${env.createdAt} via ${transport}` }, env.createdAt?.slice(11, 23) ?? "")),
    pre);
  details.addEventListener("toggle", () => {
    if (details.open && !pre.textContent) pre.textContent = JSON.stringify(env, null, 2);
  });
  return el("li", { dataset: { seq: seq ?? "", stage: env.stage } }, details);
}

// ---------------------------------------------------------------------------------------------------
// The page

const STATE_TEXT = {
  idle: "Not connected", connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", failed: "Failed",
};

class ConsolePage {
  constructor() {
    this.conv = null;
    this.transport = null;
    this.state = "idle";
    this.reconnects = 0;
    this.wasLive = false;
    this.frame = null;
    this.liveWaiters = [];
    this.stompAvailable = null;
  }

  init() {
    const q = new URLSearchParams(location.search);
    const id = q.get("conversation");
    $("conversation").value = id && UUID_RE.test(id) ? id : uuid4();
    if (q.get("transport") === "stomp") $("transport-stomp").checked = true;
    if (q.get("snapshot") === "turn") $("snapshot").checked = true;
    if (q.get("sockjs")) $("sockjs-transport").value = q.get("sockjs");

    $("new-id").addEventListener("click", () => { $("conversation").value = uuid4(); $("conversation").focus(); });
    $("connect-form").addEventListener("submit", (e) => { e.preventDefault(); this.connect(); });
    $("disconnect").addEventListener("click", () => this.disconnect());
    $("drop").addEventListener("click", () => this.transport?.drop());
    $("message-form").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("message").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this.send(); }
    });
    $("clear-log").addEventListener("click", () => { $("log").replaceChildren(); });
    for (const r of document.querySelectorAll("input[name=transport]")) r.addEventListener("change", () => this.syncForm());
    this.syncForm();
    this.probeVendor();
    setInterval(() => this.pollWatchers(), WATCHERS_POLL_MS);
  }

  // The watcher count: GET /api/v1/conversation/presence/{id} (every gateway process) while connected.
  async pollWatchers() {
    const out = $("stat-watchers");
    if (!this.conv || this.state === "idle" || this.state === "failed") { out.textContent = "—"; return; }
    const headers = {};
    const token = $("token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const res = await fetch(new URL(`api/v1/conversation/presence/${this.conv.id}`, BASE), { headers });
      if (!res.ok) { out.textContent = "—"; out.title = `presence: HTTP ${res.status}`; return; }
      const body = await res.json();
      out.textContent = String(body.viewers);
      out.dataset.viewers = String(body.viewers);
      out.title = Object.entries(body.byTransport).map(([t, n]) => `${t}: ${n}`).join(", ") || "nobody";
    } catch (err) {
      out.title = `presence: ${err.message ?? err}`;
    }
  }

  mode() {
    return document.querySelector("input[name=transport]:checked").value;
  }

  syncForm() {
    $("sockjs-options").hidden = this.mode() !== "stomp";
  }

  async probeVendor() {
    try {
      await loadVendor();
      this.stompAvailable = true;
    } catch (err) {
      this.stompAvailable = false;
      const note = $("vendor-note");
      note.replaceChildren("STOMP mode needs the browser bundles of @stomp/stompjs and sockjs-client, which this " +
        "installation lacks: run ", el("code", {}, "make vendor"), " and reload. SSE works without them.");
      note.hidden = false;
      const stomp = $("transport-stomp");
      stomp.disabled = true;
      stomp.setAttribute("aria-describedby", "vendor-note");
      if (stomp.checked) { document.querySelector("input[name=transport][value=sse]").checked = true; this.syncForm(); }
      this.activity("warn", `STOMP unavailable: ${err.message}`);
    }
  }

  activity(level, text) {
    const list = $("activity");
    list.append(el("li", { className: level, dataset: { level } }, el("time", {}, clock()), " ", text));
    while (list.childElementCount > MAX_ACTIVITY) list.firstElementChild.remove();
    list.lastElementChild.scrollIntoView({ block: "nearest" });
  }

  setState(state, detail = "") {
    if (state === "live") {
      if (this.wasLive) this.reconnects += 1;
      this.wasLive = true;
      for (const resolve of this.liveWaiters.splice(0)) resolve(true);
    }
    if (state === "failed") {
      for (const resolve of this.liveWaiters.splice(0)) resolve(false);
      if (/\b40[13]\b|token|auth|denied|forbidden/i.test(detail)) document.querySelector("details.auth").open = true;
    }
    if (state !== this.state || detail) {
      if (state !== "connecting") this.activity(state === "failed" ? "error" : "info", `${STATE_TEXT[state]}${detail ? `: ${detail}` : ""}`);
    }
    this.state = state;
    const conn = $("conn");
    conn.dataset.state = state;
    $("conn-text").textContent = `${STATE_TEXT[state]}${detail && state !== "live" ? ` (${detail})` : ""}`;
    const active = state !== "idle" && state !== "failed";
    $("connect").disabled = active;
    $("disconnect").disabled = !active;
    $("drop").disabled = state !== "live";
    for (const input of $("connect-form").querySelectorAll("input, select")) {
      if (input.id !== "transport-stomp" || this.stompAvailable !== false) input.disabled = active;
    }
    $("new-id").disabled = active;
    this.renderStats();
  }

  renderStats() {
    $("stat-transport").textContent = this.transport?.label ?? "—";
    $("stat-seq").textContent = this.conv?.lastSeq ?? "—";
    $("stat-reconnects").textContent = String(this.reconnects);
    $("stat-envelopes").textContent = this.conv
      ? `${this.conv.envelopes}${this.conv.duplicates ? ` (${this.conv.duplicates} duplicate)` : ""}` : "0";
  }

  async connect() {
    const input = $("conversation");
    const id = input.value.trim().toLowerCase();
    if (!UUID_RE.test(id)) {
      input.setAttribute("aria-invalid", "true");
      this.activity("error", "the conversation id must be a UUID");
      input.focus();
      return false;
    }
    input.removeAttribute("aria-invalid");
    const mode = this.mode();
    if (mode === "stomp") {
      try { await loadVendor(); } catch { this.activity("error", "STOMP needs `make vendor`"); return false; }
    }
    if (this.conv?.id !== id) {
      // Another conversation: a fresh view. The same one again resumes from its last seq.
      this.conv = new Conversation(id);
      this.reconnects = 0;
      this.wasLive = false;
      $("turns").replaceChildren();
      $("notices").replaceChildren();
      $("log").replaceChildren();
    } else if (this.conv.lastSeq !== null) {
      this.activity("info", `resuming after seq ${this.conv.lastSeq}`);
    }
    const q = new URLSearchParams({ conversation: id, transport: mode });
    if ($("snapshot").checked) q.set("snapshot", "turn");
    if (mode === "stomp" && $("sockjs-transport").value) q.set("sockjs", $("sockjs-transport").value);
    history.replaceState(null, "", `${location.pathname}?${q}`);

    let transport = null;
    const current = (fn) => (...args) => { if (this.transport === transport) fn(...args); }; // ignore a stopped one
    const opts = {
      conversationId: id,
      token: $("token").value.trim(),
      snapshot: $("snapshot").checked,
      sockjsTransport: $("sockjs-transport").value,
      cursor: () => this.conv.lastSeq,
      onEnvelope: current((env, seq) => this.onEnvelope(env, seq)),
      onStale: current((notice) => this.onStale(notice)),
      onState: current((state, detail) => this.setState(state, detail)),
      log: current((level, text) => this.activity(level, text)),
    };
    transport = this.transport = mode === "stomp" ? new StompTransport(opts) : new SseTransport(opts);
    this.setState("connecting");
    transport.start();
    return true;
  }

  disconnect() {
    const transport = this.transport;
    this.transport = null;
    transport?.stop();
    this.setState("idle");
  }

  waitLive(timeoutMs) {
    if (this.state === "live") return Promise.resolve(true);
    return new Promise((resolve) => {
      this.liveWaiters.push(resolve);
      setTimeout(() => resolve(false), timeoutMs);
    });
  }

  onStale(notice) {
    if (notice.reason === "slow") {
      this.activity("warn", `cut loose as a slow viewer; resuming from seq ${notice.resumeFrom}`);
      return;
    }
    this.activity("warn", `resume not exact (${notice.reason}): requested ${notice.requested ?? this.conv.lastSeq}, ` +
      `replay starts at the oldest kept seq ${notice.oldest} (newest ${notice.newest})`);
    this.conv.acceptReplay();
  }

  onEnvelope(env, seq) {
    const conv = this.conv;
    if (!conv) return;
    if (!conv.apply(env, seq)) {
      this.activity("warn", `duplicate seq ${seq} ignored`);
    }
    const log = $("log");
    log.append(logEntry(env, seq, this.transport?.label ?? ""));
    while (log.childElementCount > MAX_LOG) log.firstElementChild.remove();
    this.schedule();
  }

  schedule() {
    // Render at most once per frame; the timer covers windows whose frames the browser throttles.
    if (this.frame) return;
    const run = () => {
      if (!this.frame) return;
      cancelAnimationFrame(this.frame.raf);
      clearTimeout(this.frame.timer);
      this.frame = null;
      this.render();
    };
    this.frame = { raf: requestAnimationFrame(run), timer: setTimeout(run, 100) };
  }

  render() {
    const conv = this.conv;
    const scroller = $("turns-scroll");
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    const list = $("turns");
    for (const number of [...conv.changed].sort((a, b) => a - b)) {
      const node = renderTurn(conv.turns.get(number));
      const old = list.querySelector(`:scope > li[data-turn="${number}"]`);
      if (old) old.replaceWith(node);
      else {
        const after = [...list.children].find((li) => Number(li.dataset.turn) > number);
        list.insertBefore(node, after ?? null);
      }
    }
    conv.changed.clear();
    const notices = $("notices");
    while (notices.childElementCount < conv.notices.length) {
      const n = conv.notices[notices.childElementCount];
      notices.append(el("li", { className: n.level, role: n.level === "error" ? "alert" : null },
        el("time", {}, n.at?.slice(11, 19) ?? ""), " ", n.text));
    }
    $("empty").hidden = conv.turns.size > 0;
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
    if ($("follow").checked) { const log = $("log"); log.scrollTop = log.scrollHeight; }
    this.renderStats();
  }

  async send() {
    const text = $("message").value;
    const result = $("send-result");
    if (!text.trim()) { result.textContent = "Type a message first."; return; }
    const id = $("conversation").value.trim().toLowerCase();
    if (this.state === "idle" || this.state === "failed" || this.conv?.id !== id) {
      // Watch first, so the turn's first envelopes are seen live.
      if (this.state !== "idle" && this.state !== "failed") this.disconnect();
      if (!(await this.connect()) || !(await this.waitLive(8000))) { result.textContent = "Not connected: the message was not sent."; return; }
    }
    const button = $("send");
    button.disabled = true;
    result.dataset.ok = "";
    result.textContent = "Sending…";
    const headers = { "Content-Type": "application/json" };
    const token = $("token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const res = await fetch(new URL("api/v1/conversation/message", BASE), {
        method: "POST", headers, body: JSON.stringify({ conversationId: this.conv.id, message: text, idempotencyKey: uuid4() }),
      });
      const body = await res.json().catch(() => ({}));
      if (res.ok) {
        result.dataset.ok = "true";
        result.textContent = `${res.status} ${body.idempotent ? "idempotent (already submitted)" : "accepted"}`;
        this.activity("info", `POST message → ${res.status} (idempotencyKey ${body.idempotencyKey ?? "?"})`);
      } else {
        result.dataset.ok = "false";
        result.textContent = `${res.status}: ${body.message ?? res.statusText}`;
        this.activity("error", `POST message → ${res.status}: ${body.message ?? res.statusText}`);
      }
    } catch (err) {
      result.dataset.ok = "false";
      result.textContent = `failed: ${err.message ?? err}`;
    } finally {
      button.disabled = false;
    }
  }
}

const page = new ConsolePage();
page.init();
window.hqConsole = page; // for the browser test and for poking around in devtools
