// Drives the live console (/console) in a real headless Chromium for tests/integration/test_console_browser.py.
//
//   node tests/node/console_browser.mjs '{"base": "http://127.0.0.1:8080", "conversation": "<uuid>", ...}'
//
// Options (one JSON object): base, conversation, chromium (executable), userDataDir (fresh, empty),
// turn1 / turn2 (messages), screenshot (PNG path), timeoutMs (per wait, default 15000).
//
// The story, with one page watching over STOMP/SockJS and one over SSE:
//   1. both pages connect and are live; the STOMP page submits turn 1; both show it completed;
//   2. the SSE page submits turn 2; once its tool call shows, both pages drop their connection ("Drop & resume")
//      and reconnect, resuming from their last seq (STOMP since-seq, SSE Last-Event-ID); both complete it;
//   3. a third page whose vendor bundles fail to load says STOMP needs `make vendor` and still works over SSE.
// stdout: one JSON line {"ok": true, "pages": {stomp: ..., sse: ..., noVendor: ...}, "problems": [...]}
// (what each page shows); exit 0, or exit 1 with {"ok": false, "error": ...} when a wait timed out.

import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2] ?? "{}");
const timeout = opts.timeoutMs ?? 15_000;
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const problems = []; // page errors, console errors, CSP violations, failed requests: none expected

function watch(page, name, { allow404 = false } = {}) {
  page.on("pageerror", (err) => problems.push(`${name}: page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    // The no-vendor page's 404s for the bundles are the point of that page.
    if (allow404 && /404|Failed to load resource/.test(msg.text())) return;
    problems.push(`${name}: console error: ${msg.text()}`);
  });
  page.on("requestfailed", (req) => {
    const failure = req.failure()?.errorText ?? "";
    if (/ERR_ABORTED/.test(failure)) return; // drops and page teardown abort on purpose
    problems.push(`${name}: request failed: ${req.url()} ${failure}`);
  });
}

async function open(context, name, query, options = {}) {
  const page = await context.newPage();
  watch(page, name, options);
  await options.setup?.(page);
  await page.exposeFunction("__cspViolation", (v) => problems.push(`${name}: CSP violation: ${v}`));
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => window.__cspViolation(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const res = await page.goto(`${opts.base}/console?${query}`, { waitUntil: "load", timeout });
  if (res.status() !== 200) throw new Error(`${name}: GET /console answered ${res.status()}`);
  return { page, name, csp: res.headers()["content-security-policy"] };
}

async function connect({ page }, mode) {
  if (mode === "stomp") {
    await page.waitForFunction(() => window.hqConsole?.stompAvailable === true, null, { timeout });
    await page.check("input[name=transport][value=stomp]");
  }
  await page.click("#connect");
  await page.waitForSelector("#conn[data-state=live]", { timeout });
}

async function submit({ page }, text) {
  await page.fill("#message", text);
  await page.click("#send");
  await page.waitForSelector("#send-result[data-ok=true]", { timeout });
}

const completed = (turn) => `.turn[data-turn="${turn}"][data-state=COMPLETED] .reply[data-final=true]`;

async function snapshot({ page }) {
  return page.evaluate(() => {
    const text = (sel, root = document) => root.querySelector(sel)?.textContent ?? null;
    const c = window.hqConsole;
    return {
      state: document.querySelector("#conn").dataset.state,
      transport: text("#stat-transport"),
      lastSeq: text("#stat-seq"),
      reconnects: Number(text("#stat-reconnects")),
      duplicates: c.conv?.duplicates ?? null,
      logSeqs: [...document.querySelectorAll("#log > li")].map((li) => li.dataset.seq),
      activity: [...document.querySelectorAll("#activity > li")].map((li) => li.textContent),
      vendorNote: document.querySelector("#vendor-note").hidden ? null : text("#vendor-note"),
      stompDisabled: document.querySelector("#transport-stomp").disabled,
      turns: [...document.querySelectorAll("#turns > li.turn")].map((li) => ({
        turn: Number(li.dataset.turn),
        state: li.dataset.state,
        userInput: li.querySelector(".user-input")?.childNodes[1]?.textContent ?? null,
        reply: text(".reply-text", li),
        replyFinal: li.querySelector(".reply")?.dataset.final === "true",
        replyMatches: li.querySelector(".reply-meta")?.dataset.match === "true",
        replyMeta: text(".reply-meta", li),
        usage: text(".usage", li),
        errors: [...li.querySelectorAll(".error")].map((e) => e.textContent),
        tools: [...li.querySelectorAll("tr.tool")].map((tr) => ({
          name: tr.dataset.name,
          status: tr.dataset.status,
          duration: text(".tool-duration", tr),
          summary: text(".tool-summary", tr),
          args: text(".tool-args", tr),
        })),
      })),
    };
  });
}

let context;
try {
  context = await chromium.launchPersistentContext(opts.userDataDir, {
    executablePath: opts.chromium,
    headless: true,
    args: FLAGS,
    viewport: { width: 1360, height: 820 },
    colorScheme: "light",
    reducedMotion: "reduce",
    timeout,
  });
  const conv = opts.conversation;
  const stomp = await open(context, "stomp", `conversation=${conv}&transport=stomp`);
  const sse = await open(context, "sse", `conversation=${conv}`);
  await connect(stomp, "stomp");
  await connect(sse, "sse");

  // 1. A turn submitted from the STOMP page, seen live by both.
  await submit(stomp, opts.turn1);
  for (const p of [stomp, sse]) await p.page.waitForSelector(completed(1), { timeout });

  // 2. A slower turn from the SSE page; both drop mid-turn and resume from their last seq.
  await submit(sse, opts.turn2);
  for (const p of [stomp, sse]) await p.page.waitForSelector('.turn[data-turn="2"] tr.tool', { timeout });
  // A DOM click on both at once: Playwright's click() first waits for stable animation frames, which Chromium
  // throttles to ~1/s in a page without focus (the console itself renders on a timer too, for the same reason).
  await Promise.all([stomp, sse].map((p) => p.page.$eval("#drop", (button) => button.click())));
  for (const p of [stomp, sse]) {
    await p.page.waitForFunction(() => window.hqConsole.reconnects === 1 && window.hqConsole.state === "live", null, { timeout });
    await p.page.waitForSelector(completed(2), { timeout });
  }

  // 3. Without the vendored bundles: STOMP is disabled with a clear note; SSE still works.
  const noVendor = await open(context, "noVendor", `conversation=${conv}&transport=stomp&snapshot=turn`, {
    allow404: true,
    setup: (page) => page.route("**/console/vendor/**", (route) => route.fulfill({ status: 404, body: "missing" })),
  });
  await noVendor.page.waitForSelector("#vendor-note:not([hidden])", { timeout });
  await connect(noVendor, "sse");
  await noVendor.page.waitForSelector('.turn[data-turn="2"][data-state=COMPLETED]', { timeout });

  await stomp.page.evaluate(() => document.querySelector("#turns-scroll").scrollTo(0, 0));
  await stomp.page.screenshot({ path: opts.screenshot, type: "png" });
  const pages = {};
  for (const p of [stomp, sse, noVendor]) pages[p.name] = { ...(await snapshot(p)), csp: p.csp };
  process.stdout.write(JSON.stringify({ ok: true, pages, problems }) + "\n");
  await context.close();
  process.exit(0);
} catch (err) {
  let pages = null;
  try {
    pages = {};
    for (const p of context?.pages() ?? []) pages[p.url()] = await snapshot({ page: p });
  } catch { /* best effort */ }
  process.stdout.write(JSON.stringify({ ok: false, error: String(err?.stack ?? err), pages, problems }) + "\n");
  await context?.close().catch(() => {});
  process.exit(1);
}
