// Drives the operations view (/console/ops.html) and the console's watcher count in headless Chromium for
// tests/integration/test_ops_browser.py.
//
//   node tests/node/ops_browser.mjs '{"base": "http://127.0.0.1:8080", "conversation": "<uuid>", ...}'
//
// Options: base, conversation, chromium, userDataDir, viewers (how many watch, the console page included),
// screenshot (PNG path), timeoutMs.
// The story: a console page watches the conversation over SSE and shows how many watch it; the operations page
// lists the conversation live; its "Disconnect viewers" button ends every viewer, and the console says why.
// stdout: one JSON line {"ok": true, "row": {...}, "watchers": "3", "consoleAfter": {...}, "rowAfter": ..., "problems": []}

import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2] ?? "{}");
const timeout = opts.timeoutMs ?? 15_000;
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const problems = [];

function watch(page, name) {
  page.on("pageerror", (err) => problems.push(`${name}: page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    // The console page probes the STOMP bundles, answered 404 here: this story needs SSE only.
    if (name === "console" && /404|Failed to load resource/.test(msg.text())) return;
    problems.push(`${name}: console error: ${msg.text()}`);
  });
  page.on("requestfailed", (req) => {
    if (/ERR_ABORTED/.test(req.failure()?.errorText ?? "")) return; // page teardown
    problems.push(`${name}: request failed: ${req.url()} ${req.failure()?.errorText}`);
  });
}

async function open(context, name, path) {
  const page = await context.newPage();
  watch(page, name);
  await page.route("**/console/vendor/**", (route) => route.fulfill({ status: 404, body: "not needed here" }));
  await page.exposeFunction("__cspViolation", (v) => problems.push(`${name}: CSP violation: ${v}`));
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => window.__cspViolation(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const res = await page.goto(`${opts.base}${path}`, { waitUntil: "load", timeout });
  if (res.status() !== 200) throw new Error(`${name}: GET ${path} answered ${res.status()}`);
  return page;
}

const rowSel = (conv) => `#ops-rows tr.ops-row[data-conversation="${conv}"]`;

async function readRow(page, conv) {
  return page.$eval(rowSel(conv), (tr) => {
    const cell = (cls) => tr.querySelector(`td.ops-${cls}`)?.textContent ?? null;
    return {
      viewers: tr.dataset.viewers, state: tr.dataset.state, viewersText: cell("viewers"), holder: cell("holder"),
      reconnects: cell("reconnects"), lastEvent: cell("last-event"), since: cell("since"), journal: cell("journal"),
      turn: cell("turn"), ttft: cell("ttft"),
    };
  });
}

let context;
try {
  context = await chromium.launchPersistentContext(opts.userDataDir, {
    executablePath: opts.chromium, headless: true, args: FLAGS, viewport: { width: 1360, height: 700 },
    colorScheme: "light", reducedMotion: "reduce", timeout,
  });
  const conv = opts.conversation;
  const consolePage = await open(context, "console", `/console?conversation=${conv}`);
  await consolePage.click("#connect");
  await consolePage.waitForSelector("#conn[data-state=live]", { timeout });
  await consolePage.waitForSelector(`#stat-watchers[data-viewers="${opts.viewers}"]`, { timeout });
  const watchers = await consolePage.textContent("#stat-watchers");

  const ops = await open(context, "ops", "/console/ops.html");
  await ops.waitForSelector(`${rowSel(conv)}[data-viewers="${opts.viewers}"]`, { timeout });
  await ops.waitForSelector("#ops-status[data-state=live]", { timeout });
  const row = await readRow(ops, conv);
  const totals = { conversations: await ops.textContent("#ops-conversations"), viewers: await ops.textContent("#ops-viewers") };
  await ops.screenshot({ path: opts.screenshot, type: "png" });

  ops.on("dialog", (dialog) => dialog.accept());
  await ops.$eval(`${rowSel(conv)} button`, (button) => button.click());
  await consolePage.waitForSelector("#conn[data-state=failed]", { timeout });
  const consoleAfter = { state: "failed", text: await consolePage.textContent("#conn-text") };
  // The row then shows no viewer, or leaves the list once the upstream's linger is over.
  await ops.waitForFunction((sel) => { const tr = document.querySelector(sel); return !tr || tr.dataset.viewers === "0"; },
    rowSel(conv), { timeout });
  const rowAfter = (await ops.$(rowSel(conv))) ? await readRow(ops, conv) : null;
  process.stdout.write(JSON.stringify({ ok: true, row, totals, watchers, consoleAfter, rowAfter, problems }) + "\n");
  await context.close();
  process.exit(0);
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err?.stack ?? err), problems }) + "\n");
  await context?.close().catch(() => {});
  process.exit(1);
}
