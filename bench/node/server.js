// The Node `ws` server of the benchmark: what the same scenarios cost on Node's event loop.
//
// Speaks what bench/servers.py's kinds speak, so the driver and the Python load generators
// treat it like them: `READY <port>` on stdout once listening (127.0.0.1 only), data frames
// echoed, a ping every 30 s (a connection whose last ping got no pong is terminated),
// `GET /_bench/stats` (connections, what the broadcaster did, sessions that ended since it
// started) and `POST /_bench/broadcast?count=N&interval=S&size=B[&yield_every=K]`, which sends
// message i with data "<i>:<CLOCK_MONOTONIC>:xxx..." in rtgevent's envelope {"route":"tick","data":...}
// to every client at start + i * interval; back to back, it yields to the event loop
// (setImmediate) after every K broadcasts (1, the default: after each; 0: never) as
// bench/servers.py's Broadcaster yields to the gevent hub. process.hrtime reads
// CLOCK_MONOTONIC on Linux, the clock the Python receiver stamps arrivals with.
"use strict";

const http = require("node:http");
const { WebSocketServer, WebSocket } = require("ws");

const HEARTBEAT_MS = 30000;
const state = { started: null, finished: null, sent: 0, closes: [] };

function monotonic() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

function broadcast(count, interval, size, yieldEvery) {
  const start = monotonic();
  Object.assign(state, { started: start, finished: null, sent: 0, closes: [] });
  let i = 0;
  const next = () => {
    for (let n = 0; ; n++) {
      if (i >= count) {
        state.finished = monotonic();
        return;
      }
      const wait = start + i * interval - monotonic();
      if (wait > 0) {
        setTimeout(next, wait * 1000);
        return;
      }
      if (n > 0 && (interval > 0 || (yieldEvery > 0 && i % yieldEvery === 0))) {
        setImmediate(next);
        return;
      }
      const stamp = `${i}:${monotonic().toFixed(6)}:`;
      const frame = JSON.stringify({ route: "tick", data: stamp + "x".repeat(Math.max(0, size - stamp.length)) });
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(frame);
      }
      state.sent += 1;
      i += 1;
    }
  };
  setImmediate(next); // the 202 leaves first, as from the Python servers
}

function control(req, res) {
  const url = new URL(req.url, "http://127.0.0.1");
  if (url.pathname === "/_bench/stats") {
    const seconds = state.started === null || state.finished === null ? null : state.finished - state.started;
    json(res, 200, { connections: wss.clients.size, broadcast_sent: state.sent, broadcast_seconds: seconds, closes: state.closes });
    return;
  }
  if (url.pathname === "/_bench/broadcast" && req.method === "POST") {
    const count = Number(url.searchParams.get("count"));
    const interval = Number(url.searchParams.get("interval"));
    const size = Number(url.searchParams.get("size"));
    const yieldEvery = Number(url.searchParams.get("yield_every") ?? "1");
    const bounded = count <= 100000 && interval >= 0 && interval <= 10 && size >= 32 && size <= 1 << 20;
    if (!(Number.isInteger(count) && count > 0 && bounded && Number.isInteger(yieldEvery) && yieldEvery >= 0)) {
      json(res, 400, { error: "count, interval, size or yield_every out of bounds" });
    } else if (state.started !== null && state.finished === null) {
      json(res, 400, { error: "a broadcast is already running" });
    } else {
      broadcast(count, interval, size, yieldEvery);
      json(res, 202, { started: true });
    }
    return;
  }
  json(res, 404, { error: "not found" });
}

const server = http.createServer(control);
const wss = new WebSocketServer({ server, maxPayload: 1 << 20, perMessageDeflate: false });

wss.on("connection", (ws) => {
  ws.alive = true;
  ws.on("pong", () => {
    ws.alive = true;
  });
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on("close", (code, reason) => {
    if (state.started !== null) state.closes.push({ code, reason: reason.toString(), after: monotonic() - state.started });
  });
  ws.on("error", () => {});
});

setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.alive) {
      ws.terminate();
      continue;
    }
    ws.alive = false;
    ws.ping();
  }
}, HEARTBEAT_MS).unref();

const portArg = process.argv.indexOf("--port");
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
server.listen({ host: "127.0.0.1", port, backlog: 2048 }, () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
