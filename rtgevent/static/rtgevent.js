/*
 * rtgevent.js: the browser client of rtgevent. No dependencies, no build step.
 *
 *   const rt = RTGevent.connect("/ws", {token: "..."});
 *   rt.on("chat.message", (data, msg) => ...);
 *   rt.on("rt.state", (state, detail) => ...);      // "connecting" | "open" | "closed"
 *   rt.send("chat.send", {text: "hi"});
 *   rt.request("chat.history", {}, {timeout: 5000}).then(reply => ..., err => err.code);
 *
 *   const sub = rt.subscribe("room:42", (data, msg) => ...);   // publications of room:42 only
 *   sub.ready.then(reply => ..., err => err.code);  // reply: {channel, offset, epoch, recovered, missed};
 *                                                   // a refusal rejects: "unauthorized", "limit", "bad_message"
 *   sub.on("join", (info) => ...);                  // rt.join / rt.leave of others: {channel, session_id, identity_id}
 *   sub.on("leave", (info) => ...);
 *   sub.on("subscribed", (reply) => ...);           // every confirmation, the ones after a reconnect too
 *   sub.on("recovery_failed", (info) => ...);       // {channel, offset, epoch}: a reconnect (or a given
 *                                                   // since) could not get back what was missed: reload
 *   sub.on("error", (err) => ...);                  // a refusal (the subscription ends), or a transient
 *                                                   // "unavailable" (it is retried)
 *   sub.state;        // "pending" | "subscribed" (on the current connection) | "unsubscribed"
 *   sub.active;       // false once unsubscribed, refused or the client closed; sub.reply: the last reply
 *   sub.position;     // {offset, epoch} where the client stands in the channel's stream (read-only):
 *                     // the last publication delivered, or the reply's position before any; null
 *                     // before the first reply. {offset: 0, epoch: ""} for a channel without history
 *   sub.unsubscribe();                              // a Promise, resolved once the server confirmed
 *   rt.subscriptions();                             // the live Subscription objects
 *   rt.subscribe("doc.7", fn, {since: {offset: 17, epoch: "k3f9"}});   // recover from a known position
 *
 *   rt.on("rt.recovery_failed", (info) => ...);     // {channel (null: the personal stream), offset, epoch}
 *   rt.personalPosition;                            // {offset, epoch} of the personal stream, or null
 *   RTGevent.connect("/ws", {token: "...", since: {offset: 5, epoch: "ab12"}});  // a known personal position
 *   rt.close();
 *
 * Why it does what it does:
 * - The token goes in the query string (?access_token=...): browsers cannot set headers on
 *   a WebSocket handshake (BearerTokenAuthenticator reads both). With {tokenIn: "message"}
 *   it is sent as the first message instead (rt.auth, for InBandAuthenticator), which keeps
 *   it out of server logs.
 * - Reconnects after any drop with exponential backoff and jitter, capped, so a restarted
 *   server is not hit by every client in the same millisecond. The backoff is only reset once
 *   a connection stayed open a while: a server that accepts and closes at once is not hammered.
 *   No reconnect after rt.close() or after close code 4001 (the session was replaced by a newer
 *   one of the same identity: reconnecting would replace that one in turn, forever).
 * - Messages sent while disconnected wait in a bounded queue (the oldest is dropped when it is
 *   full) and are flushed, in order, once the connection is open again.
 * - A request that was already written when the connection dropped is rejected (code
 *   "disconnected"): its reply would have gone to the old connection. A request still in the
 *   queue is sent after the reconnect.
 * - Subscriptions belong to the client, not to one connection: after every (re)connect the
 *   client sends rt.subscribe again for every live subscription by itself, before the queued
 *   messages (a queued message to a channel finds the session in it), passing
 *   since: {offset, epoch}, the channel's position (below), so that the server sends what was
 *   published meanwhile before the reply. subscribe() never queues: it is sent now if the
 *   connection is open, else on the next open. A since given to subscribe() is where a channel
 *   not subscribed yet starts from; a channel already subscribed keeps its own position.
 *   sub.ready settles on the first answer; it rejects with "unsubscribed" when unsubscribe()
 *   came first, "closed" when the client closed first.
 * - Each publication once, in order, across reconnects (history: SPEC section 14). The client
 *   keeps, per stream (each channel, and the personal stream: envelopes with metadata.offset
 *   and metadata.epoch but no channel), the last {offset, epoch} it handed to the application.
 *   One in the same epoch at or below that offset is a duplicate (a replay overlapping what
 *   came before the drop) and is dropped. A subscribe reply / rt.personal sets the position
 *   when none is kept yet or when it names another epoch (the store lost the stream). The
 *   personal position goes with every new connection: ?since=<offset>:<epoch> in the URL (one
 *   since parameter given in the URL is replaced), or {token, since} as the rt.auth data with
 *   {tokenIn: "message"}. Since {offset: 0, epoch: ""} means "seen nothing yet": the stream's
 *   first publications are recovered too.
 * - A reply that does not say recovered: true to a since means the server could not give back
 *   everything missed (a new epoch, history trimmed or expired). A channel without history
 *   (the reply's epoch is "", and the client never saw one) has nothing to recover: no event.
 *   Otherwise:
 *   "rt.recovery_failed" goes to on() handlers with {channel, offset, epoch} (where the stream
 *   stands now; channel null for the personal stream), and for a channel "recovery_failed" to
 *   its subscriptions, before their "subscribed"; the application reloads its state. The
 *   position becomes the reply's, so the next reconnect does not ask for what is gone again
 *   (unless publications came on this connection: they are past the reply's position).
 * - With {tokenIn: "message"} envelopes that arrive before the rt.auth reply are dispatched,
 *   in order, right after it, not dropped.
 * - An envelope whose metadata names a channel this client subscribed to (for rt.join /
 *   rt.leave, data.channel) goes to that channel's subscriptions only, not to on(route)
 *   handlers; one of a channel being unsubscribed is dropped. Envelopes of channels the
 *   server subscribed the session to (session.subscribe) go to on(route) as usual.
 * - Several subscriptions of one channel share one server subscription: the last
 *   unsubscribe() sends rt.unsubscribe. A refused subscription ends (sub.active is false);
 *   an "unavailable" answer (the server's broker did not answer) is retried with backoff.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory(root);
  } else {
    root.RTGevent = factory(root);
  }
})(typeof self !== "undefined" ? self : this, function (root) {
  "use strict";

  var REPLY = "rt.reply";
  var ERROR = "rt.error";
  var AUTH = "rt.auth";
  var STATE = "rt.state";
  var SUBSCRIBE = "rt.subscribe";
  var UNSUBSCRIBE = "rt.unsubscribe";
  var JOIN = "rt.join";
  var LEAVE = "rt.leave";
  var PERSONAL = "rt.personal";
  var RECOVERY_FAILED = "rt.recovery_failed";
  // rt.error codes of rt.subscribe that say "not now" rather than "no": retried
  var TRANSIENT = {unavailable: true, timeout: true};

  var DEFAULTS = {
    token: null,            // string, or a function returning one (called before every connect)
    tokenIn: "query",       // "query" (?access_token=) or "message" (first message rt.auth)
    tokenParam: "access_token",
    protocols: undefined,
    initialDelay: 500,      // ms before the first reconnect attempt (before jitter)
    maxDelay: 10000,        // backoff cap, ms
    factor: 2,
    jitter: 0.5,            // the delay is drawn from [d * (1 - jitter), d]
    stableAfter: 5000,      // a connection open this long resets the backoff
    queueSize: 256,         // messages kept while disconnected
    requestTimeout: 10000,  // default request() timeout, ms; 0: none
    reconnect: true,
    since: null             // {offset, epoch}: the personal stream's position to start from
  };

  function rtError(code, message, data) {
    var err = new Error(message || code);
    err.name = "RTGeventError";
    err.code = code;
    err.data = data;
    return err;
  }

  function resolveUrl(url) {
    if (/^wss?:\/\//i.test(url)) return url;
    if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, "ws");
    var loc = root.location;
    var scheme = loc.protocol === "https:" ? "wss://" : "ws://";
    if (url.charAt(0) !== "/") {
      var dir = loc.pathname.replace(/[^/]*$/, "");
      url = dir + url;
    }
    return scheme + loc.host + url;
  }

  function withToken(url, param, token) {
    if (token === null || token === undefined || token === "") return url;
    var sep = url.indexOf("?") === -1 ? "?" : "&";
    return url + sep + encodeURIComponent(param) + "=" + encodeURIComponent(token);
  }

  /** ``url`` with the query parameter ``name`` set to ``value``: any earlier one is dropped. */
  function withParam(url, name, value) {
    var q = url.indexOf("?");
    var parts = q === -1 ? [] : url.slice(q + 1).split("&");
    var kept = [];
    for (var i = 0; i < parts.length; i++) {
      var key = parts[i].split("=")[0];
      try {
        key = decodeURIComponent(key.replace(/\+/g, " "));
      } catch (err) {
        // not percent-encoded properly: not ours to touch, compared as it is
      }
      if (parts[i] !== "" && key !== name) kept.push(parts[i]);
    }
    kept.push(encodeURIComponent(name) + "=" + encodeURIComponent(value));
    return (q === -1 ? url : url.slice(0, q)) + "?" + kept.join("&");
  }

  // ------------------------------------------------------------------ stream positions

  /** The {offset, epoch} of a since the application gave, or of a reply; null if it has none. */
  function positionIn(obj) {
    if (!obj || typeof obj !== "object" || obj.offset === undefined || obj.offset === null) return null;
    if (typeof obj.epoch !== "string") return null;
    var offset = Number(obj.offset);
    return isFinite(offset) && offset >= 0 ? {offset: offset, epoch: obj.epoch} : null;
  }

  /** The position an envelope's metadata carries (offset and epoch, strings on the wire), or null. */
  function positionOf(meta) {
    if (meta.offset === undefined || meta.offset === null || meta.offset === "") return null;
    if (meta.epoch === undefined || meta.epoch === null) return null;
    return {offset: Number(meta.offset), epoch: String(meta.epoch)};
  }

  /** A publication at ``pos`` is new unless it is in the kept epoch at or below the kept offset. */
  function isNew(kept, pos) {
    return kept === null || kept.epoch !== pos.epoch || pos.offset > kept.offset;
  }

  /**
   * The position to keep after a reply (rt.subscribe's, rt.personal) that says the stream is
   * at ``there``, to a request that brought ``asked`` (null: none): the reply's when nothing
   * was kept or it names another epoch, or when recovery ``failed`` and nothing came since the
   * request (the client stands where the stream stands); else the kept one, which publications
   * of this connection may have moved past the reply's.
   */
  function afterReply(kept, asked, there, failed) {
    if (kept === null || kept.epoch !== there.epoch || (failed && kept === asked)) return there;
    return kept;
  }

  function copy(pos) {
    return pos === null ? null : {offset: pos.offset, epoch: pos.epoch};
  }

  function Client(url, options) {
    this.url = resolveUrl(url);
    this.options = {};
    var key;
    for (key in DEFAULTS) this.options[key] = DEFAULTS[key];
    for (key in options || {}) this.options[key] = options[key];
    this.state = "closed";
    this._ws = null;
    this._handlers = {};
    this._queue = [];         // {frame, id} waiting for an open connection
    this._pending = {};       // id -> {resolve, reject, timer, sent}
    this._nextId = 1;
    this._attempt = 0;
    this._retryTimer = null;
    this._stableTimer = null;
    this._closedByUser = false;
    this._authenticated = false;
    this._channels = {};      // channel -> {subs, state, gen, reply, position, leaving, retry, retries}
    this._personal = positionIn(this.options.since);  // the personal stream's {offset, epoch}, or null
    this._personalAsked = null;  // the position the current connection brought (null: none)
    var self = this;
    this._onOnline = function () { if (self._retryTimer !== null) self._retryNow(); };
    if (root.addEventListener) root.addEventListener("online", this._onOnline);
    // open on the next microtask, so that handlers registered right after connect()
    // (rt.on("rt.state", ...)) see the first "connecting" too
    Promise.resolve().then(function () { if (!self._closedByUser) self._open(); });
  }

  Client.prototype.on = function (route, fn) {
    (this._handlers[route] = this._handlers[route] || []).push(fn);
    var self = this;
    return function () { self.off(route, fn); };
  };

  Client.prototype.off = function (route, fn) {
    var list = this._handlers[route];
    if (!list) return;
    var i = list.indexOf(fn);
    if (i !== -1) list.splice(i, 1);
  };

  function emit(handlers, name, a, b) {
    var list = (handlers[name] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i](a, b);
      } catch (err) {
        // one broken handler must not stop the others, nor the connection
        rethrowLater(err);
      }
    }
  }

  function rethrowLater(err) {
    setTimeout(function () { throw err; }, 0);
  }

  Client.prototype._emit = function (route, data, msg) {
    emit(this._handlers, route, data, msg);
  };

  Client.prototype._setState = function (state, detail) {
    if (this.state === state) return;
    this.state = state;
    this._emit(STATE, state, detail || {});
  };

  Object.defineProperty(Client.prototype, "connected", {
    get: function () { return this.state === "open"; }
  });

  /** {offset, epoch} of the personal stream (the last message delivered, or rt.personal's), or null. */
  Object.defineProperty(Client.prototype, "personalPosition", {
    get: function () { return copy(this._personal); }
  });

  /** Send a message; queued while disconnected. True if it went out now. */
  Client.prototype.send = function (route, data) {
    return this._write({route: route, data: data}, null);
  };

  /** Send a message with an id; the promise settles on its rt.reply / rt.error. */
  Client.prototype.request = function (route, data, opts) {
    var self = this;
    var timeout = opts && opts.timeout !== undefined ? opts.timeout : this.options.requestTimeout;
    if (this._closedByUser) return Promise.reject(rtError("closed", "the client is closed"));
    var id = "r" + this._nextId++;
    return new Promise(function (resolve, reject) {
      var entry = {resolve: resolve, reject: reject, timer: null, sent: false};
      self._pending[id] = entry;
      if (timeout && timeout > 0 && timeout !== Infinity) {
        entry.timer = setTimeout(function () {
          self._settle(id, rtError("timeout", "no reply to " + route + " within " + timeout + " ms"));
        }, timeout);
      }
      self._write({id: id, route: route, data: data}, id);
    });
  };

  Client.prototype._settle = function (id, error, value) {
    var entry = this._pending[id];
    if (!entry) return false;
    delete this._pending[id];
    if (entry.timer !== null) clearTimeout(entry.timer);
    this._queue = this._queue.filter(function (item) { return item.id !== id; });
    if (error) entry.reject(error); else entry.resolve(value);
    return true;
  };

  Client.prototype._write = function (envelope, id) {
    if (this._closedByUser) return false;
    var frame = JSON.stringify(envelope);
    // not only "open": a socket the server is closing drops what it is given, silently
    if (this.state === "open" && this._ws && this._ws.readyState === 1) {
      this._ws.send(frame);
      if (id !== null && this._pending[id]) this._pending[id].sent = true;
      return true;
    }
    this._queue.push({frame: frame, id: id});
    while (this._queue.length > this.options.queueSize) {
      var dropped = this._queue.shift();
      if (dropped.id !== null) this._settle(dropped.id, rtError("queue_full", "dropped while disconnected"));
    }
    return false;
  };

  Client.prototype._flush = function () {
    var queue = this._queue;
    this._queue = [];
    for (var i = 0; i < queue.length; i++) {
      this._ws.send(queue[i].frame);
      if (queue[i].id !== null && this._pending[queue[i].id]) this._pending[queue[i].id].sent = true;
    }
  };

  Client.prototype._token = function () {
    var token = this.options.token;
    return typeof token === "function" ? token() : token;
  };

  Client.prototype._open = function () {
    var self = this;
    this._retryTimer = null;
    this._authenticated = false;
    this._setState("connecting", {attempt: this._attempt});
    var token = this._token();
    var inBand = this.options.tokenIn === "message";
    var url = inBand ? this.url : withToken(this.url, this.options.tokenParam, token);
    // the personal stream's position: the server replays what came after it, then rt.personal
    var asked = this._personalAsked = this._personal;
    if (asked !== null && !inBand) url = withParam(url, "since", asked.offset + ":" + asked.epoch);
    var early = [];  // in-band: envelopes before the rt.auth reply, dispatched right after it
    var ws;
    try {
      ws = new WebSocket(url, this.options.protocols);
    } catch (err) {
      this._scheduleReconnect({code: 1006, reason: String(err)});
      return;
    }
    this._ws = ws;
    ws.onopen = function () {
      if (self._ws !== ws) return;
      if (inBand) {
        var auth = asked === null ? token : {token: token, since: copy(asked)};
        ws.send(JSON.stringify({id: "auth", route: AUTH, data: auth}));
        return;  // "open" once rt.auth is answered
      }
      self._opened();
    };
    ws.onmessage = function (event) {
      if (self._ws !== ws || typeof event.data !== "string") return;
      var msg;
      try {
        msg = JSON.parse(event.data);
      } catch (err) {
        return;  // not an envelope: nothing to route it by
      }
      if (!msg || typeof msg.route !== "string") return;
      if (inBand && !self._authenticated) {
        if (msg.route === REPLY) {
          self._authenticated = true;
          self._opened();
          // the session opened before the reply was sent: its personal replay came first
          for (var i = 0; i < early.length && self._ws === ws; i++) self._dispatch(early[i]);
          early = [];
        } else if (msg.route === ERROR) {
          self._emit(ERROR, msg.data, msg);
        } else {
          early.push(msg);
        }
        return;
      }
      self._dispatch(msg);
    };
    ws.onclose = function (event) {
      if (self._ws !== ws) return;
      self._ws = null;
      self._scheduleReconnect({code: event.code, reason: event.reason, wasClean: event.wasClean});
    };
    ws.onerror = function () { /* onclose follows and decides */ };
  };

  Client.prototype._opened = function () {
    var self = this;
    this._setState("open", {});
    this._stableTimer = setTimeout(function () { self._attempt = 0; }, this.options.stableAfter);
    // subscriptions first: a queued message to a channel must find the session in it
    for (var name in this._channels) {
      var ch = this._channels[name];
      if (ch.subs.length && ch.state === "idle") this._sendSubscribe(ch);
    }
    this._flush();
  };

  Client.prototype._isOpen = function () {
    return this.state === "open" && this._ws !== null && this._ws.readyState === 1;
  };

  Client.prototype._dispatch = function (msg) {
    var meta = msg.metadata || {};
    if (msg.route !== REPLY && msg.route !== ERROR) {
      var channel = meta.channel;
      if (channel === undefined && (msg.route === JOIN || msg.route === LEAVE) && msg.data) channel = msg.data.channel;
      var ch = typeof channel === "string" ? this._channels[channel] : undefined;
      if (ch !== undefined) {
        if (ch.subs.length) this._deliver(ch, msg, meta);
        return;  // a channel being unsubscribed: its last publications are dropped
      }
      if (channel === undefined) {
        var pos = positionOf(meta);
        if (pos !== null) {
          // the personal stream
          if (!isNew(this._personal, pos)) return;  // delivered before the reconnect
          this._personal = pos;
        } else if (msg.route === PERSONAL && msg.data && typeof msg.data === "object") {
          this._personalReply(msg.data);
        }
      }
    } else {
      var id = meta.in_reply_to;
      var error = null;
      if (msg.route === ERROR) {
        var text = msg.data && msg.data.message ? msg.data.message : meta.code;
        error = rtError(meta.code || "error", text, msg.data);
      }
      if (id !== undefined && id !== "" && this._settle(id, error, msg.data)) return;
    }
    this._emit(msg.route, msg.data, msg);
  };

  // ------------------------------------------------------------------ channels

  /**
   * Subscribe to a channel: handler(data, msg) gets its publications. Returns a Subscription;
   * options: {since: {offset, epoch}} to recover from a known position (history, SPEC 14).
   */
  Client.prototype.subscribe = function (channel, handler, opts) {
    if (typeof channel !== "string") throw new TypeError("subscribe(channel, ...): channel must be a string");
    var sub = new Subscription(this, channel);
    if (typeof handler === "function") sub.on("publication", handler);
    if (this._closedByUser) {
      sub._end(rtError("closed", "the client is closed"));
      return sub;
    }
    var ch = this._channels[channel];
    if (ch === undefined) {
      ch = this._channels[channel] = {
        name: channel, subs: [], state: "idle", gen: 0, reply: null,
        position: null, leaving: 0, retry: null, retries: 0
      };
    }
    // where a new channel starts from; one already subscribed keeps where it is
    if (ch.position === null) ch.position = positionIn(opts && opts.since);
    ch.subs.push(sub);
    if (ch.state === "subscribed") {
      var reply = ch.reply;
      Promise.resolve().then(function () { if (sub.active) sub._confirmed(reply); });
    } else if (ch.state === "idle" && ch.retry === null && this._isOpen()) {
      this._sendSubscribe(ch);
    }
    // "pending": the answer on its way settles this one too; not open: sent on the next open
    return sub;
  };

  /** The live subscriptions (not unsubscribed, not refused). */
  Client.prototype.subscriptions = function () {
    var all = [];
    for (var name in this._channels) all = all.concat(this._channels[name].subs);
    return all;
  };

  Client.prototype._sendSubscribe = function (ch) {
    var self = this;
    var gen = ++ch.gen;
    var id = "s" + this._nextId++;
    var data = {channel: ch.name};
    var asked = ch.position;  // publications replace ch.position: "nothing came since" is asked === ch.position
    if (asked !== null) data.since = copy(asked);
    ch.state = "pending";
    this._pending[id] = {
      resolve: function (reply) { if (ch.gen === gen) self._subscribed(ch, reply, asked); },
      reject: function (err) { if (ch.gen === gen) self._subscribeFailed(ch, err); },
      timer: null,
      sent: true
    };
    this._ws.send(JSON.stringify({id: id, route: SUBSCRIBE, data: data}));
  };

  /** Whether a reply to a since says something was lost: not recovered, and there was a stream
   *  to recover (a channel without history answers epoch "", and its client never saw one). */
  function lost(asked, reply, there) {
    return asked !== null && reply.recovered !== true && (asked.epoch !== "" || there.epoch !== "");
  }

  Client.prototype._subscribed = function (ch, reply, asked) {
    ch.state = "subscribed";
    ch.reply = reply;
    ch.retries = 0;
    var there = positionIn(reply);
    var failure = null;
    if (there !== null) {
      var failed = lost(asked, reply, there);
      ch.position = afterReply(ch.position, asked, there, failed);
      if (failed) failure = {channel: ch.name, offset: there.offset, epoch: there.epoch};
    }
    if (failure !== null) this._emit(RECOVERY_FAILED, failure);
    var subs = ch.subs.slice();
    for (var i = 0; i < subs.length; i++) {
      if (failure !== null) emit(subs[i]._handlers, "recovery_failed", failure);
      subs[i]._confirmed(reply);
    }
  };

  /** rt.personal: where the personal stream stands, and whether the replay was complete. */
  Client.prototype._personalReply = function (data) {
    var there = positionIn(data);
    if (there === null) return;
    var asked = this._personalAsked;
    var failed = lost(asked, data, there);
    this._personal = afterReply(this._personal, asked, there, failed);
    if (failed) this._emit(RECOVERY_FAILED, {channel: null, offset: there.offset, epoch: there.epoch});
  };

  Client.prototype._subscribeFailed = function (ch, err) {
    ch.state = "idle";
    if (err.code === "disconnected") return;  // sent again on the next open
    var subs = ch.subs.slice();
    var i;
    if (TRANSIENT[err.code] === true && !this._closedByUser) {
      var self = this;
      var o = this.options;
      var delay = Math.min(o.maxDelay, o.initialDelay * Math.pow(o.factor, ch.retries++));
      ch.retry = setTimeout(function () {
        ch.retry = null;
        if (ch.subs.length && ch.state === "idle" && self._isOpen()) self._sendSubscribe(ch);
      }, Math.round(delay * (1 - o.jitter * Math.random())));
      for (i = 0; i < subs.length; i++) emit(subs[i]._handlers, "error", err);
      return;
    }
    // refused (or the client closed): every subscription of the channel ends
    ch.subs = [];
    this._forget(ch);
    for (i = 0; i < subs.length; i++) subs[i]._end(err);
  };

  Client.prototype._unsubscribe = function (sub) {
    var ch = this._channels[sub.channel];
    var i = ch ? ch.subs.indexOf(sub) : -1;
    if (i === -1) return Promise.resolve();
    ch.subs.splice(i, 1);
    if (ch.subs.length) return Promise.resolve();
    var wasOn = ch.state !== "idle";
    ch.state = "idle";
    ch.gen++;  // an answer still on its way to the rt.subscribe is stale now
    ch.position = ch.reply = null;
    if (ch.retry !== null) {
      clearTimeout(ch.retry);
      ch.retry = null;
    }
    if (!wasOn || !this._isOpen()) {
      this._forget(ch);
      return Promise.resolve();  // nothing on the server to undo (a closed connection took it along)
    }
    ch.leaving++;
    var self = this;
    var done = function () {
      ch.leaving--;
      self._forget(ch);
    };
    return this.request(UNSUBSCRIBE, {channel: ch.name}, {timeout: 0}).then(
      function (reply) { done(); return reply; },
      function () { done(); }  // the connection dropped: so did the server's subscription
    );
  };

  Client.prototype._forget = function (ch) {
    if (!ch.subs.length && ch.leaving <= 0 && this._channels[ch.name] === ch) delete this._channels[ch.name];
  };

  Client.prototype._deliver = function (ch, msg, meta) {
    var event = "publication";
    if (msg.route === JOIN) {
      event = "join";
    } else if (msg.route === LEAVE) {
      event = "leave";
    } else {
      var pos = positionOf(meta);
      if (pos !== null) {
        if (!isNew(ch.position, pos)) return;  // handed over before the reconnect: once only
        ch.position = pos;
      }
    }
    var subs = ch.subs.slice();
    for (var i = 0; i < subs.length; i++) emit(subs[i]._handlers, event, msg.data, msg);
  };

  /** The connection is gone: so is every server-side subscription; they are sent again on open. */
  Client.prototype._dropChannels = function () {
    for (var name in this._channels) {
      var ch = this._channels[name];
      ch.state = "idle";
      ch.gen++;  // an rt.unsubscribe in flight settles ("disconnected") and forgets the channel
      if (ch.retry !== null) {
        clearTimeout(ch.retry);
        ch.retry = null;
      }
      this._forget(ch);
    }
  };

  /** The client is done for good: every subscription ends with ``err``. */
  Client.prototype._endChannels = function (err) {
    var channels = this._channels;
    this._channels = {};
    for (var name in channels) {
      var ch = channels[name];
      if (ch.retry !== null) clearTimeout(ch.retry);
      for (var i = 0; i < ch.subs.length; i++) ch.subs[i]._end(err);
    }
  };

  /**
   * One subscription of a channel (Client.subscribe makes them). Events, with sub.on(name, fn):
   * "publication" (data, msg), "join" / "leave" (info, msg), "subscribed" (reply),
   * "recovery_failed" ({channel, offset, epoch}), "error" (err).
   */
  function Subscription(client, channel) {
    var self = this;
    this.client = client;
    this.channel = channel;
    this.active = true;      // false once unsubscribed, refused, or the client closed
    this.reply = null;       // the server's last answer to rt.subscribe
    this._handlers = {};
    this._settled = false;
    this.ready = new Promise(function (resolve, reject) {
      self._resolve = resolve;
      self._reject = reject;
    });
  }

  Subscription.prototype.on = function (event, fn) {
    (this._handlers[event] = this._handlers[event] || []).push(fn);
    var self = this;
    return function () { self.off(event, fn); };
  };

  Subscription.prototype.off = function (event, fn) {
    var list = this._handlers[event];
    if (!list) return;
    var i = list.indexOf(fn);
    if (i !== -1) list.splice(i, 1);
  };

  /** "pending" (being sent or answered), "subscribed" (on the current connection), or "unsubscribed". */
  Object.defineProperty(Subscription.prototype, "state", {
    get: function () {
      if (!this.active) return "unsubscribed";
      var ch = this.client._channels[this.channel];
      return ch && ch.state === "subscribed" ? "subscribed" : "pending";
    }
  });

  /** {offset, epoch} where the client stands in the channel's stream (a copy), or null before any reply. */
  Object.defineProperty(Subscription.prototype, "position", {
    get: function () {
      var ch = this.active ? this.client._channels[this.channel] : undefined;
      return ch ? copy(ch.position) : null;
    }
  });

  /** Stop receiving this channel; a Promise resolved once the server confirmed (at once if offline). */
  Subscription.prototype.unsubscribe = function () {
    if (!this.active) return Promise.resolve();
    this.active = false;
    if (!this._settled) {
      this._settled = true;
      this._reject(rtError("unsubscribed", "unsubscribed before the server answered"));
    }
    return this.client._unsubscribe(this);
  };

  Subscription.prototype._confirmed = function (reply) {
    this.reply = reply;
    if (!this._settled) {
      this._settled = true;
      this._resolve(reply);
    }
    emit(this._handlers, "subscribed", reply);
  };

  Subscription.prototype._end = function (err) {
    this.active = false;
    if (!this._settled) {
      this._settled = true;
      this._reject(err);
    }
    if (err.code !== "closed") emit(this._handlers, "error", err);  // a refusal, not the client's own close
  };

  Client.prototype._rejectSent = function (code, text) {
    for (var id in this._pending) {
      if (this._pending[id].sent) this._settle(id, rtError(code, text));
    }
  };

  Client.prototype._delay = function () {
    var o = this.options;
    var base = Math.min(o.maxDelay, o.initialDelay * Math.pow(o.factor, this._attempt));
    this._attempt++;
    return Math.round(base * (1 - o.jitter * Math.random()));
  };

  Client.prototype._scheduleReconnect = function (detail) {
    if (this._stableTimer !== null) {
      clearTimeout(this._stableTimer);
      this._stableTimer = null;
    }
    this._rejectSent("disconnected", "the connection closed before the reply arrived");
    this._dropChannels();
    var again = this.options.reconnect && !this._closedByUser && detail.code !== 4001;
    if (again) detail.retryIn = this._delay();
    detail.willReconnect = again;
    this._setState("closed", detail);
    if (!again) {
      this._giveUp("closed", "the connection is closed");
      return;
    }
    var self = this;
    this._retryTimer = setTimeout(function () { self._open(); }, detail.retryIn);
  };

  Client.prototype._retryNow = function () {
    clearTimeout(this._retryTimer);
    this._open();
  };

  Client.prototype._giveUp = function (code, text) {
    for (var id in this._pending) this._settle(id, rtError(code, text));
    this._endChannels(rtError(code, text));
    this._queue = [];
    if (root.removeEventListener) root.removeEventListener("online", this._onOnline);
  };

  /** Close for good: no reconnect; pending requests are rejected with code "closed". */
  Client.prototype.close = function (code, reason) {
    if (this._closedByUser) return;
    this._closedByUser = true;
    if (this._retryTimer !== null) clearTimeout(this._retryTimer);
    if (this._stableTimer !== null) clearTimeout(this._stableTimer);
    this._retryTimer = this._stableTimer = null;
    var ws = this._ws;
    this._ws = null;
    if (ws) ws.close(code || 1000, reason || "");
    this._giveUp("closed", "the client is closed");
    this._setState("closed", {code: code || 1000, reason: reason || "", willReconnect: false});
  };

  return {
    version: "0.1.0",
    Client: Client,
    Subscription: Subscription,
    connect: function (url, options) { return new Client(url, options); }
  };
});
