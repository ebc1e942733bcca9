// A real JavaScript STOMP viewer for the integration tests: the ConvEngine v2 seed's client code
// (@stomp/stompjs Client + sockjs-client), run under Node against a live hq-gateway.
//
//   node tests/node/stomp_client.mjs '{"base": "http://127.0.0.1:8080", "conversation": "<uuid>", ...}'
//
// Options (one JSON object as the only argument):
//   base          gateway URL (http://host:port)                                       required
//   conversation  conversation id                                                      required
//   transport     "sockjs"      new SockJS(base + "/ws-convengine"), the seed unchanged (default)
//                 "websocket"   raw WebSocket: stompjs brokerURL with ws as the global WebSocket
//                 any SockJS transport name ("websocket" is spelled "sockjs-websocket" here,
//                 "xhr-streaming", "xhr-polling", "eventsource"): SockJS forced to that one
//   subprotocols  raw WebSocket only: webSocketFactory returning new WebSocket(url, subprotocols)
//   sinceSeq      SUBSCRIBE header since-seq on the first subscription
//   subscribeHeaders  extra SUBSCRIBE headers, e.g. {"snapshot": "turn"}
//   count         stop after this many MESSAGE frames (default: stop at stage ENGINE_RETURN)
//   stopStage     stage that ends the run (default "ENGINE_RETURN"; null: only count or timeout)
//   stopStages    how many envelopes of stopStage end the run (default 1)
//   dropAfter     after this many messages, drop the connection (client.forceDisconnect(), as a
//                 network failure would); stompjs reconnects and re-subscribes with
//                 since-seq = last seq seen, so the run must still see every envelope once
//   reconnectDelay, heartbeatIncoming, heartbeatOutgoing   stompjs settings (stompjs defaults
//                 otherwise: 5000 as in the seed, 10000, 10000)
//   holdHeartbeats  after the stop condition, stay connected until this many heart-beats went each
//                 way (server → client counted by onHeartbeatReceived, client → server by PINGs)
//   timeoutMs     give up (exit 2) after this long (default 20000)
//
// stdout, one JSON object per line:
//   {"ready": true, "connects": n, "transport": ..., "protocol": ..., "connected": {CONNECTED headers}}
//                                                   after the RECEIPT of each (re-)SUBSCRIBE
//   {"seq": 7, "headers": {...}, "body": {...}}                          per MESSAGE
//   {"summary": true, "ok": bool, "reason": ..., ...}                   last line
// Exit status: 0 stop condition met, 2 timeout, 3 STOMP ERROR frame, 4 bad arguments.

import { Client } from "@stomp/stompjs";
import SockJS from "sockjs-client";
import WebSocket from "ws";

const opts = (() => {
  try {
    return JSON.parse(process.argv[2] ?? "");
  } catch (err) {
    process.stderr.write(`usage: node stomp_client.mjs '<json options>': ${err}\n`);
    process.exit(4);
  }
})();

const base = String(opts.base ?? "").replace(/\/+$/, "");
const conversationId = opts.conversation;
const transport = opts.transport ?? "sockjs";
const stopStage = opts.stopStage === undefined ? "ENGINE_RETURN" : opts.stopStage;
const stopStages = opts.stopStages ?? 1;
const timeoutMs = opts.timeoutMs ?? 20000;
if (!base || !conversationId) {
  process.stderr.write("stomp_client.mjs: base and conversation are required\n");
  process.exit(4);
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const stats = { connects: 0, messages: 0, pongs: 0, pings: 0, heartbeatsLost: 0, socketCloses: [], errors: [] };
let lastSeq = null;
let stageHits = 0;
let dropped = false;
let finished = false;
let exiting = false;
let heartbeatWaiter = null; // set while finish() holds the connection for heart-beats
let socket = null; // the current SockJS or WebSocket object, to report the transport in use

function sockJsFactory() {
  // The seed: new SockJS("/ws-convengine"); a forced fallback only adds the transports option.
  const sockOpts = transport === "sockjs" ? undefined : { transports: [transport.replace(/^sockjs-/, "")] };
  socket = new SockJS(base + "/ws-convengine", null, sockOpts);
  return socket;
}

const config = {
  reconnectDelay: opts.reconnectDelay ?? 5000,
  debug: (line) => {
    if (line === ">>> PING") {
      stats.pings += 1;
      heartbeatWaiter?.();
    }
    if (process.env.STOMP_CLIENT_DEBUG) process.stderr.write(`[stompjs] ${line}\n`);
  },
  onConnect: (frame) => {
    stats.connects += 1;
    const connectNo = stats.connects;
    const receipt = `ready-${connectNo}`;
    const headers = { receipt, ...(opts.subscribeHeaders ?? {}) };
    const since = lastSeq ?? opts.sinceSeq;
    if (since !== undefined && since !== null) headers["since-seq"] = String(since);
    client.watchForReceipt(receipt, () => {
      const used = socket?.transport ?? transport; // SockJS: the transport it settled on
      out({ ready: true, connects: connectNo, transport: used, protocol: socket?.protocol ?? null,
            connected: frame.headers });
    });
    client.subscribe(
      "/topic/convengine/audit/" + conversationId,
      (message) => onMessage(message),
      headers,
    );
  },
  onStompError: (frame) => {
    stats.errors.push({ message: frame.headers.message ?? null, body: frame.body });
    exit(3, "stomp ERROR frame");
  },
  onWebSocketClose: (evt) => {
    stats.socketCloses.push({ code: evt?.code ?? null, reason: evt?.reason ?? "" });
  },
  onHeartbeatReceived: () => {
    stats.pongs += 1;
    heartbeatWaiter?.();
  },
  onHeartbeatLost: () => {
    stats.heartbeatsLost += 1;
  },
};
if (opts.heartbeatIncoming !== undefined) config.heartbeatIncoming = opts.heartbeatIncoming;
if (opts.heartbeatOutgoing !== undefined) config.heartbeatOutgoing = opts.heartbeatOutgoing;

const wsUrl = base.replace(/^http/, "ws") + "/ws-convengine";
if (transport === "websocket") {
  if (opts.subprotocols) {
    config.webSocketFactory = () => (socket = new WebSocket(wsUrl, opts.subprotocols));
  } else {
    // stompjs's own way under Node: brokerURL plus a global WebSocket (it offers v10/v11/v12.stomp).
    globalThis.WebSocket = class extends WebSocket {
      constructor(...args) {
        super(...args);
        socket = this;
      }
    };
    config.brokerURL = wsUrl;
  }
} else {
  config.webSocketFactory = sockJsFactory;
}

const client = new Client(config);

function onMessage(message) {
  if (finished) return;
  const seq = message.headers.seq === undefined ? null : Number(message.headers.seq);
  let body;
  try {
    body = JSON.parse(message.body);
  } catch {
    body = { unparsed: message.body };
  }
  stats.messages += 1;
  lastSeq = seq ?? lastSeq;
  out({ seq, headers: message.headers, body });
  if (stopStage !== null && body?.stage === stopStage) stageHits += 1;
  if ((opts.count && stats.messages >= opts.count) || (stopStage !== null && stageHits >= stopStages)) {
    finish(0, "done");
    return;
  }
  if (opts.dropAfter && !dropped && stats.messages >= opts.dropAfter) {
    dropped = true;
    client.forceDisconnect(); // as a network failure: no DISCONNECT, stompjs reconnects by itself
  }
}

async function finish(code, reason) {
  if (finished) return;
  finished = true; // no more messages are recorded
  if (code === 0 && opts.holdHeartbeats) {
    // Still under the overall timeout: a connection whose heart-beats stall ends in exit 2.
    const want = { pongs: stats.pongs + opts.holdHeartbeats, pings: stats.pings + opts.holdHeartbeats };
    await new Promise((resolve) => {
      heartbeatWaiter = () => stats.pongs >= want.pongs && stats.pings >= want.pings && resolve();
    });
  }
  await exit(code, reason);
}

async function exit(code, reason) {
  if (exiting) return;
  exiting = true;
  clearTimeout(timer);
  heartbeatWaiter = null;
  out({ summary: true, ok: code === 0, reason, lastSeq, transport: socket?.transport ?? transport, ...stats });
  // A clean DISCONNECT (bounded: an HTTP fallback may take a moment to close).
  await Promise.race([client.deactivate().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 2000))]);
  process.exit(code);
}

const timer = setTimeout(() => exit(2, `timeout after ${timeoutMs} ms`), timeoutMs);
client.activate();
