// The Node `ws` load generator of the fanout scenario: clients that only listen.
//
// The same job as bench/receiver.py, on Node's event loop with ws's parser, so that the figures
// do not hang on one client's implementation. Unlike the Python receiver, it reads every
// connection the moment data arrives (sweeps of paused connections, tried, cost Node more CPU
// per delivery than they saved), so a server faster than this client is measured at the
// client's pace, and its latencies include the client's backlog. It speaks the same driver
// link on stdin and stdout:
//
//   -> {"event": "ready"}   <- go   -> {"event": "done", ...figures...}   <- close   -> {"event": "closed"}
//
// and takes the same arguments (KIND --port P --clients N --count C --size B --interval S --yield-every K ...).
// Every 20th connection is a probe whose deliveries give the latency (arrival minus the stamp
// "<i>:<CLOCK_MONOTONIC>:" in the data; process.hrtime reads CLOCK_MONOTONIC on Linux, the
// clock the servers stamp with); every connection counts for lost and duplicate messages.
// Bounded: connects by --timeout, each receive phase by --time-limit, any wait for the driver by
// --max-seconds, the whole process by a timer that exits it.
"use strict";

const http = require("node:http");
const readline = require("node:readline");
const { WebSocket } = require("ws");

const HEAD = 96;
const QUOTE = 0x22;
const COLON = 0x3a;
const ZERO = 0x30;
const NINE = 0x39;

// The "<i>:<seconds>:" stamp at the start of a broadcast's data, in either wire format
// ({"route":"tick","data":"<i>:..."} or 42["tick","<i>:..."]): [i, seconds], or null. A scan
// of the first bytes, not a regex over a decoded string: it is most of this process's own work.
function stamp(data) {
  const end = Math.min(data.length, HEAD);
  for (let at = 0; at < end - 1; at++) {
    if (data[at] !== QUOTE || data[at + 1] < ZERO || data[at + 1] > NINE) continue;
    let pos = at + 1;
    let index = 0;
    while (pos < end && data[pos] >= ZERO && data[pos] <= NINE) index = index * 10 + data[pos++] - ZERO;
    if (data[pos] !== COLON) continue;
    const from = ++pos;
    while (pos < end && data[pos] !== COLON) pos++;
    if (pos >= end) return null;
    const sent = Number(data.toString("latin1", from, pos));
    return Number.isFinite(sent) ? [index, sent] : null;
  }
  return null;
}

function parseArgs(argv) {
  const args = { kind: argv[0], probes: 50, size: 100, interval: 0, warmup: 5, slow: 0 };
  Object.assign(args, { timeLimit: 60, timeout: 30, maxSeconds: 600, port: 0, clients: 0, count: 0 });
  args.yieldEvery = 1;
  const names = { "--time-limit": "timeLimit", "--max-seconds": "maxSeconds", "--yield-every": "yieldEvery" };
  for (let i = 1; i < argv.length; i += 2) {
    const flag = argv[i];
    const key = names[flag] || flag.replace(/^--/, "");
    if (!(key in args)) throw new Error(`unknown argument ${flag}`);
    args[key] = Number(argv[i + 1]);
  }
  if (!["rtgevent-full", "reference", "node", "socketio"].includes(args.kind)) throw new Error(`unknown kind ${args.kind}`);
  if (args.slow) throw new Error("--slow is not supported by the Node load generator (fanout only)");
  if (!(args.port > 0 && args.clients > 0 && args.count > 0)) throw new Error("--port, --clients and --count are needed");
  return args;
}

const args = parseArgs(process.argv.slice(2));
const engineio = args.kind === "socketio";
const path = engineio ? "/socket.io/?EIO=4&transport=websocket" : "/ws";

function monotonic() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function emit(event, fields) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

// ------------------------------------------------------------------ the driver's words

const words = [];
const waiting = [];
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  words.push(line.trim());
  while (waiting.length) waiting.shift()();
});

function driver(word) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${JSON.stringify(word)} from the driver`)), args.maxSeconds * 1000);
    const look = () => {
      while (words.length) {
        if (words.shift() === word) {
          clearTimeout(timer);
          resolve();
          return;
        }
      }
      waiting.push(look);
    };
    look();
  });
}

// ------------------------------------------------------------------ connections

class Stream {
  constructor(ws, probe) {
    this.ws = ws;
    this.probe = probe;
    this.want = 0;
    this.seen = new Set();
    this.duplicates = 0;
    this.unreadable = 0;
    this.latencies = [];
    this.lastArrival = 0;
    this.firstSent = Infinity;
    this.closed = "";
  }

  reset(want) {
    Object.assign(this, { want, seen: new Set(), duplicates: 0, unreadable: 0, latencies: [], lastArrival: 0, firstSent: Infinity });
  }

  done() {
    return this.closed !== "" || this.seen.size >= this.want;
  }

  arrive(data) {
    const now = this.probe ? monotonic() : 0;
    if (engineio && data.length === 1 && data[0] === 0x32) {
      this.ws.send("3"); // Engine.IO ping
      return;
    }
    const match = stamp(data);
    if (match === null) {
      this.unreadable += 1;
      return;
    }
    const index = match[0];
    if (this.seen.has(index)) {
      this.duplicates += 1;
      return;
    }
    this.seen.add(index);
    const sent = match[1];
    if (sent < this.firstSent) this.firstSent = sent;
    if (this.probe) {
      this.latencies.push(now - sent);
      this.lastArrival = now;
    }
    if (this.seen.size === this.want) phase.arrived();
  }
}

function open(probe) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${args.port}${path}`, {
      perMessageDeflate: false,
      handshakeTimeout: args.timeout * 1000,
      skipUTF8Validation: true, // the frames are checked by their stamp; validation is the client's CPU
    });
    const stream = new Stream(ws, probe);
    let ready = !engineio;
    ws.on("error", (err) => {
      stream.closed = stream.closed || err.code || "error";
      if (!ready) reject(err);
      phase.arrived();
    });
    ws.on("close", (code) => {
      stream.closed = stream.closed || `close frame ${code}`;
      phase.arrived();
    });
    ws.on("open", () => {
      if (ready) settle();
    });
    const settle = () => resolve(stream);
    ws.on("message", (data) => {
      if (ready) {
        stream.arrive(data);
        return;
      }
      const text = data.toString();
      if (text.startsWith("0{")) ws.send("40");
      else if (text === "2") ws.send("3");
      else if (text.startsWith("40{")) {
        ready = true;
        settle();
      } else reject(new Error(`unexpected Socket.IO handshake frame ${text.slice(0, 40)}`));
    });
  });
}

async function connectAll(count, concurrency) {
  const streams = new Array(count);
  const every = Math.max(1, Math.floor(count / Math.max(1, args.probes)));
  let next = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      streams[i] = await open(i % every === 0);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  return streams;
}

// ------------------------------------------------------------------ one receive phase

const phase = { streams: [], resolve: null, arrived() {} };

function receive(streams, want) {
  for (const s of streams) s.reset(want);
  return new Promise((resolve) => {
    const started = monotonic();
    let pending = streams.filter((s) => !s.done()).length;
    const finish = () => {
      clearTimeout(timer);
      phase.arrived = () => {};
      resolve(monotonic() - started);
    };
    const timer = setTimeout(finish, args.timeLimit * 1000);
    phase.arrived = () => {
      pending = streams.filter((s) => !s.done()).length;
      if (pending === 0) finish();
    };
    if (pending === 0) finish();
  });
}

function trigger(count, size, yieldEvery) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: args.port, method: "POST", path: `/_bench/broadcast?count=${count}&interval=${args.interval}&size=${size}&yield_every=${yieldEvery}` },
      (res) => {
        res.resume();
        if (res.statusCode === 202) resolve();
        else reject(new Error(`the server refused the broadcast: ${res.statusCode}`));
      },
    );
    req.setTimeout(args.timeout * 1000, () => req.destroy(new Error("the broadcast request timed out")));
    req.on("error", reject);
    req.end();
  });
}

function percentile(sorted, q) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))]; // as bench/loadgen.py
}

function figures(streams, want) {
  const out = { received: 0, lost: 0, duplicates: 0, unreadable: 0, latencies: [], firstSent: Infinity, lastArrival: 0 };
  for (const s of streams) {
    out.received += s.seen.size;
    out.lost += want - s.seen.size;
    out.duplicates += s.duplicates;
    out.unreadable += s.unreadable;
    if (s.firstSent < out.firstSent) out.firstSent = s.firstSent;
    if (s.lastArrival > out.lastArrival) out.lastArrival = s.lastArrival;
    for (const latency of s.latencies) out.latencies.push(latency);
  }
  out.latencies.sort((a, b) => a - b);
  return out;
}

function cpuSeconds() {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

async function main() {
  setTimeout(() => process.exit(3), (args.maxSeconds * 2 + 300) * 1000).unref(); // never outlive a lost driver
  const streams = await connectAll(args.clients, 100);

  // warm-up: the first broadcasts' allocations and the JIT are not measured
  const warm = receive(streams, args.warmup);
  await trigger(args.warmup, args.size, 1);
  await warm;
  const warmup = figures(streams, args.warmup);
  emit("ready", { warmup_lost: warmup.lost, warmup_closed: streams.filter((s) => s.closed).length });
  await driver("go");

  const cpu0 = cpuSeconds();
  const phaseDone = receive(streams, args.count);
  await trigger(args.count, args.size, args.yieldEvery);
  const elapsed = await phaseDone;
  const cpu = cpuSeconds() - cpu0;
  const result = figures(streams, args.count);
  const lat = result.latencies;
  const span = result.lastArrival - result.firstSent;
  emit("done", {
    expected: args.count * streams.length,
    received: result.received,
    lost: result.lost,
    duplicates: result.duplicates,
    unreadable: result.unreadable,
    elapsed,
    rate: span > 0 ? result.received / span : 0,
    p50_ms: percentile(lat, 0.5) * 1000,
    p99_ms: percentile(lat, 0.99) * 1000,
    max_ms: lat.length ? lat[lat.length - 1] * 1000 : NaN,
    readers_closed: streams.filter((s) => s.closed).map((s) => s.closed).sort(),
    loadgen_cpu: cpu,
  });
  await driver("close");
  for (const s of streams) s.ws.terminate();
  emit("closed", { slow_closed: [], slow_open: 0 });
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(2);
});
