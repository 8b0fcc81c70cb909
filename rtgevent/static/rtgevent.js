/*
 * rtgevent.js: the browser client of rtgevent. No dependencies, no build step.
 *
 *   const rt = RTGevent.connect("/ws", {token: "..."});
 *   rt.on("chat.message", (data, msg) => ...);
 *   rt.on("rt.state", (state, detail) => ...);      // "connecting" | "open" | "closed"
 *   rt.send("chat.send", {text: "hi"});
 *   rt.request("chat.history", {}, {timeout: 5000}).then(reply => ..., err => err.code);
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
    reconnect: true
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

  Client.prototype._emit = function (route, data, msg) {
    var list = (this._handlers[route] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i](data, msg);
      } catch (err) {
        // one broken handler must not stop the others, nor the connection
        setTimeout(function () { throw err; }, 0);
      }
    }
  };

  Client.prototype._setState = function (state, detail) {
    if (this.state === state) return;
    this.state = state;
    this._emit(STATE, state, detail || {});
  };

  Object.defineProperty(Client.prototype, "connected", {
    get: function () { return this.state === "open"; }
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
        ws.send(JSON.stringify({id: "auth", route: AUTH, data: token}));
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
        } else if (msg.route === ERROR) {
          self._emit(ERROR, msg.data, msg);
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
    this._flush();
  };

  Client.prototype._dispatch = function (msg) {
    var meta = msg.metadata || {};
    if (msg.route === REPLY || msg.route === ERROR) {
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
    connect: function (url, options) { return new Client(url, options); }
  };
});
