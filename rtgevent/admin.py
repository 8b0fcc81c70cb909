"""The admin page: one self-contained page and its JSON endpoints, live and cluster-wide (issue 18).

What it shows comes from the shared store, never from asking the nodes: the live nodes and
their session counts from presence leases (`NodeDirectory.nodes`), who is online from the
node sets (`NodeDirectory.online_identities`), and the rest (channels and their local
member counts, message counters, recent disconnects) from a small stats record that every
node with the admin app writes into presence every few seconds (`NodeRecorder`,
`Node.write_stats`).  One store read answers for a cluster of any size, and a node that
died is simply absent once its lease ends: nobody waits for it to answer.

Off unless configured: `Realtime.admin_app` (plain WSGI, mount it anywhere),
`Realtime.admin_blueprint` (Flask), ``rtgevent serve --admin-token`` (at ``/admin``).
Routes, relative to where it is mounted::

    GET  /                 the page (static: it holds no data, it asks the API with the token)
    GET  /api/state?q=     the whole picture as JSON; ``q`` searches the identities online
    POST /api/kick         {"tenant", "identity"}: close the identity's sessions on every node
    POST /api/publish      {"channel", "route", "data"}: `Realtime.publish`
    POST /api/broadcast    {"route", "data"}: `Realtime.broadcast`

Security: every API call carries the token as ``Authorization: Bearer`` (compared in
constant time) and the header ``X-RTG-Admin: 1``.  Nothing rides on ambient credentials (no
cookie, no HTTP auth the browser would replay), so another site cannot forge a request the
browser would authenticate: that is the CSRF defence.  The custom header and the JSON body
make any cross-site attempt a CORS preflight, which is never approved (no
``Access-Control-Allow-Origin`` is ever sent); a ``Sec-Fetch-Site: cross-site`` request is
refused outright.  Every answer is ``Cache-Control: no-store``; the page gets a strict
Content-Security-Policy (its inline script and style by a per-response nonce, nothing
from elsewhere) and may not be framed (no clickjacking of the kick button).
"""

from __future__ import annotations

import collections
import hmac
import itertools
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from werkzeug.wrappers import Request, Response

from .errors import InvalidOption, RealtimeError
from .presence.base import NodeDirectory, NodeLease

if TYPE_CHECKING:
    import logging

    from flask import Blueprint

    from .config import Config
    from .delivery import Fanout
    from .hub import Hub
    from .node import Node
    from .presence.base import Presence
    from .session import Session
    from .types import DisconnectInfo

__all__ = ["ADMIN_HTML", "AdminApp", "Administered", "NodeRecorder", "admin_blueprint"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

#: the page, shipped in the package
ADMIN_HTML = Path(__file__).resolve().parent / "static" / "admin.html"

#: how many identities the page lists at most (it asks the store for one more, to say "more")
IDENTITY_LIMIT = 500
#: channels a node's record names at most (its biggest): keeps the record small
CHANNEL_LIMIT = 200
#: the chart: seconds per point, and how far back it goes
CHART_STEP = 5.0
CHART_WINDOW = 300.0
#: disconnects are counted over this many seconds; the record lists the last few one by one
DISCONNECT_WINDOW = 600.0
RECENT_DISCONNECTS = 10
#: the close code and reason of a kick from the page (1008: policy, like `Emitter.kick_identity`)
KICK_CODE, KICK_REASON = 1008, "kicked by an administrator"
#: the shortest token accepted: guessing it must be hopeless (``secrets.token_urlsafe()`` gives 43)
MIN_TOKEN = 16
#: the largest request body an action may carry
MAX_BODY = 64 * 1024


class Administered(Protocol):
    """What the admin page needs of a `Realtime` (it never imports the facade: no circle)."""

    config: Config
    hub: Hub
    node: Node
    fanout: Fanout
    logger: logging.Logger

    @property
    def node_id(self) -> str: ...

    @property
    def presence(self) -> Presence: ...

    def stats(self) -> dict[str, int]: ...

    def broadcast(self, route: str, data: Any = None) -> None: ...

    def publish(self, channel: str, route: str, data: Any = None) -> int: ...


# ---------------------------------------------------------------------- the node's record


class NodeRecorder:
    """This node's part of the admin page: what it writes into its stats record every few seconds.

    Counting costs nothing per message (the counters exist already); per disconnect it is
    one append to a bounded deque, from an ``on_disconnect`` hook.  The record keeps the
    counter samples of the last `CHART_WINDOW` seconds, so a page opened now draws the
    last minutes at once instead of starting an empty chart.
    """

    def __init__(self, rt: Administered, period: float) -> None:
        if not (isinstance(period, int | float) and math.isfinite(period) and period > 0):
            raise InvalidOption("stats_interval", "must be a positive number of seconds")
        self._rt = rt
        self.period = period
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=int(CHART_WINDOW / period) + 3
        )
        #: (when, initiator, code, tenant, identity, reason) of recent disconnects, oldest first
        self._disconnects: collections.deque[tuple[float, str, int, str, str, str]] = collections.deque(maxlen=5000)

    def disconnected(self, session: Session, info: DisconnectInfo) -> None:
        """The ``on_disconnect`` hook: remember why the session ended."""
        identity = session.identity
        self._disconnects.append(
            (time.time(), str(info.initiator), info.code, identity.tenant_id, identity.id, info.reason[:120])
        )

    def record(self) -> dict[str, Any]:
        """The stats record as written now (a few KB at most)."""
        rt = self._rt
        now = time.time()
        stats = rt.stats()
        self._samples.append((now, stats["messages_in"], stats["messages_out"]))
        while self._disconnects and self._disconnects[0][0] < now - DISCONNECT_WINDOW:
            self._disconnects.popleft()
        grouped = collections.Counter((initiator, code) for _, initiator, code, *_ in self._disconnects)
        hub = rt.hub
        channels = sorted(((name, hub.channel_size(name)) for name in hub.channels()), key=lambda c: (-c[1], c[0]))
        started = rt.node.started_at
        return {
            "node_id": rt.node_id,
            "started": started.isoformat() if started is not None else None,
            "at": now,
            "interval": self.period,
            "presence_ttl": rt.config.presence_ttl,
            "sessions": stats["connections"],
            "connections_total": stats["connections_total"],
            "messages_in": stats["messages_in"],
            "messages_out": stats["messages_out"],
            "samples": [list(sample) for sample in self._samples],
            "channels": [list(c) for c in channels[:CHANNEL_LIMIT]],
            "channels_total": len(channels),
            "disconnects": [[initiator, code, n] for (initiator, code), n in sorted(grouped.items())],
            "recent": [list(d) for d in list(self._disconnects)[-RECENT_DISCONNECTS:]],
        }


# ---------------------------------------------------------------------- the cluster's picture


def _at(samples: list[list[float]], t: float) -> tuple[float, float] | None:
    """The counters (in, out) at time ``t``, linearly between two samples; None outside them."""
    for (t0, in0, out0), (t1, in1, out1) in itertools.pairwise(samples):
        if t0 <= t <= t1 and t1 > t0:
            f = (t - t0) / (t1 - t0)
            return in0 + f * (in1 - in0), out0 + f * (out1 - out0)
    return None


def rates(records: Iterable[dict[str, Any]], now: float) -> list[list[float | None]]:
    """Messages in and out per second, cluster-wide: ``[t, in, out]`` every `CHART_STEP` s, oldest first.

    Each node's counters are read at the same wall-clock instants (between its samples), so
    nodes that wrote at different moments add up; an instant no node covers is None (a gap
    in the chart, not a false zero).  The last point lags a record interval behind, so that
    every live node has written past it.
    """
    records = list(records)
    lag = max((float(r.get("interval", CHART_STEP)) for r in records), default=CHART_STEP)
    end = math.floor((now - lag) / CHART_STEP) * CHART_STEP
    points: list[list[float | None]] = []
    for k in range(int(CHART_WINDOW / CHART_STEP), -1, -1):
        t = end - k * CHART_STEP
        total_in = total_out = 0.0
        covered = False
        for record in records:
            samples = record.get("samples") or []
            before, after = _at(samples, t - CHART_STEP), _at(samples, t)
            if before is None or after is None:
                continue
            covered = True
            total_in += max(0.0, after[0] - before[0]) / CHART_STEP
            total_out += max(0.0, after[1] - before[1]) / CHART_STEP
        points.append([t, round(total_in, 2), round(total_out, 2)] if covered else [t, None, None])
    return points


def _node_row(lease: NodeLease) -> dict[str, Any]:
    stats = lease.stats or {}
    ttl = stats.get("presence_ttl")
    age = None
    if lease.expires_in is not None and isinstance(ttl, int | float):
        age = max(0.0, round(float(ttl) - lease.expires_in, 1))
    return {
        "id": lease.node_id,
        "sessions": lease.sessions,
        "started": stats.get("started"),
        "lease_expires_in": lease.expires_in,
        "lease_age": age,
        "presence_ttl": ttl,
        "messages_in": stats.get("messages_in"),
        "messages_out": stats.get("messages_out"),
        "channels": stats.get("channels_total"),
        "stats": lease.stats is not None,
    }


def cluster_state(directory: NodeDirectory, search: str = "", *, here: str, refresh: float) -> dict[str, Any]:
    """What ``GET api/state`` answers: every figure of the page, from the store alone."""
    leases = directory.nodes()
    records = [lease.stats for lease in leases if lease.stats is not None]
    identities = directory.online_identities(search, IDENTITY_LIMIT + 1)
    channels: collections.Counter[str] = collections.Counter()
    grouped: collections.Counter[tuple[str, int]] = collections.Counter()
    recent: list[dict[str, Any]] = []
    for lease in leases:
        record = lease.stats or {}
        for name, members in record.get("channels", []):
            channels[str(name)] += int(members)
        for initiator, code, n in record.get("disconnects", []):
            grouped[(str(initiator), int(code))] += int(n)
        for at, initiator, code, tenant, identity, reason in record.get("recent", []):
            recent.append(
                {
                    "at": at,
                    "node": lease.node_id,
                    "initiator": initiator,
                    "code": code,
                    "tenant": tenant,
                    "identity": identity,
                    "reason": reason,
                }
            )
    recent.sort(key=lambda d: d["at"], reverse=True)
    now = time.time()
    return {
        "node": here,
        "at": now,
        "refresh": refresh,
        "nodes": [_node_row(lease) for lease in leases],
        "sessions": sum(lease.sessions for lease in leases),
        "identities": [
            {"tenant": o.tenant_id, "identity": o.identity_id, "sessions": o.sessions}
            for o in identities[:IDENTITY_LIMIT]
        ],
        "identities_more": len(identities) > IDENTITY_LIMIT,
        "search": search,
        "channels": [
            {"channel": name, "members": n} for name, n in sorted(channels.items(), key=lambda c: (-c[1], c[0]))
        ],
        "rates": {"step": CHART_STEP, "points": rates(records, now)},
        "disconnects": [
            {"initiator": initiator, "code": code, "count": n} for (initiator, code), n in sorted(grouped.items())
        ],
        "disconnect_window": DISCONNECT_WINDOW,
        "recent": recent[:RECENT_DISCONNECTS],
    }


# ---------------------------------------------------------------------- the application


class _Refused(Exception):
    """An API request refused: its status and a short text (nothing about the cluster)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _data(value: Any) -> Any:
    """An action's ``data``: text that parses as JSON is sent as that value, other text as the string."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class AdminApp:
    """The admin page and its API as a WSGI application (``rt.admin_app(token=...)``).

    Mount it under any prefix (``DispatcherMiddleware(app, {"/admin": rt.admin_app(token)})``);
    `admin_blueprint` serves the same from Flask.  ``refresh`` is how often the page asks
    for the state (seconds).
    """

    def __init__(self, rt: Administered, token: str, *, refresh: float = 3.0) -> None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN:
            raise InvalidOption("token", f"must be a string of at least {MIN_TOKEN} characters")
        if not (isinstance(refresh, int | float) and math.isfinite(refresh) and refresh > 0):
            raise InvalidOption("refresh", "must be a positive number of seconds")
        self.rt = rt
        self.refresh = float(refresh)
        self._token = token.encode()
        self._page = ADMIN_HTML.read_text(encoding="utf-8")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        # PATH_INFO itself: ``request.path`` says "/" for the mount point without its slash
        return self.respond(request, environ.get("PATH_INFO", ""))(environ, start_response)

    # ------------------------------------------------------------------ dispatch

    def respond(self, request: Request, path: str) -> Response:
        """The answer to ``request``, whose path below the mount point is ``path`` ("" or "/...")."""
        try:
            if path in ("", "/"):
                if request.method not in ("GET", "HEAD"):
                    raise _Refused(405, "method not allowed")
                if path == "":  # the page's relative URLs need the trailing slash
                    return self._secure(Response(status=308, headers={"Location": request.script_root + "/"}))
                return self._page_response()
            if not path.startswith("/api/"):
                raise _Refused(404, "not found")
            self._authorize(request)
            action = path.removeprefix("/api/")
            if action == "state":
                if request.method != "GET":
                    raise _Refused(405, "method not allowed")
                return self._json(self.state(request.args.get("q", "")[:200]))
            if action in ("kick", "publish", "broadcast"):
                if request.method != "POST":
                    raise _Refused(405, "method not allowed")
                return self._json(self.act(action, self._body(request)))
            raise _Refused(404, "not found")
        except _Refused as refused:
            response = self._json({"error": str(refused)}, refused.status)
            if refused.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="rtgevent admin"'
            return response

    def _authorize(self, request: Request) -> None:
        """The token (``Authorization: Bearer``, constant-time), the custom header, no cross-site request."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise _Refused(403, "cross-site request")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest on the encoded token: the time taken says nothing of how much matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise _Refused(401, "unauthorized")
        if request.headers.get("X-RTG-Admin") != "1":
            raise _Refused(403, "the X-RTG-Admin: 1 header is required")

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if request.mimetype != "application/json":
            raise _Refused(415, "send application/json")
        if (request.content_length or 0) > MAX_BODY:
            raise _Refused(413, "body too large")
        try:
            body = json.loads(request.get_data(cache=False)[:MAX_BODY] or b"null")
        except ValueError:
            raise _Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object")
        return body

    # ------------------------------------------------------------------ what it does

    def state(self, search: str = "") -> dict[str, Any]:
        """The cluster's picture (`cluster_state`) from this node's presence store."""
        presence = self.rt.presence
        if not isinstance(presence, NodeDirectory):
            raise _Refused(501, "this presence store lists no nodes")
        try:
            return cluster_state(presence, search, here=self.rt.node_id, refresh=self.refresh)
        except RealtimeError as exc:
            self.rt.logger.warning("rtgevent: the admin page could not read presence: %s", exc)
            raise _Refused(503, "presence store unavailable") from None

    def act(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """One action of the page: kick, publish or broadcast; what it reached."""

        def text(name: str, required: bool = True) -> str:
            value = body.get(name, "")
            if not isinstance(value, str) or (required and not value):
                raise _Refused(400, f"{name!r} must be a non-empty string")
            return value

        rt = self.rt
        try:
            if action == "kick":
                tenant, identity = text("tenant", required=False), text("identity")
                reach = rt.fanout.kick_identity(tenant, identity, KICK_CODE, KICK_REASON)
                rt.logger.warning("rtgevent: %s/%s kicked from the admin page", tenant, identity)
                return {"ok": True, "sessions": reach.sessions, "nodes": reach.nodes}
            if action == "publish":
                local = rt.publish(text("channel"), text("route"), _data(body.get("data")))
                return {"ok": True, "local": local}
            rt.broadcast(text("route"), _data(body.get("data")))
            return {"ok": True}
        except InvalidOption as exc:
            raise _Refused(400, str(exc)) from None
        except RealtimeError as exc:
            raise _Refused(503, str(exc).splitlines()[0]) from None

    # ------------------------------------------------------------------ answers

    def _page_response(self) -> Response:
        nonce = secrets.token_urlsafe(18)
        body = self._page.replace("{{nonce}}", nonce)
        response = Response(body, mimetype="text/html")
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return self._secure(response)

    def _json(self, value: Any, status: int = 200) -> Response:
        return self._secure(Response(json.dumps(value), status=status, mimetype="application/json"))

    @staticmethod
    def _secure(response: Response) -> Response:
        """Headers on every answer: never cached, never framed, never sniffed, no referrer."""
        headers = response.headers
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        return response


def admin_blueprint(admin: AdminApp, name: str = "rtgevent_admin", url_prefix: str = "/admin") -> Blueprint:
    """The admin page as a Flask blueprint at ``url_prefix`` (the page at ``<url_prefix>/``).

    Flask's request is handed to `AdminApp.respond`: the same checks and answers as the
    WSGI application.  An app-wide CSRF extension (Flask-WTF's ``CSRFProtect``) must exempt
    the blueprint: its actions are protected by the token header instead of a form token.
    """
    from flask import Blueprint, request

    bp = Blueprint(name, __name__, url_prefix=url_prefix)

    def view(rest: str = "") -> Response:
        return admin.respond(request, "/" + rest)

    bp.add_url_rule("/", endpoint="page", view_func=view, methods=["GET", "POST"])
    bp.add_url_rule("/<path:rest>", endpoint="api", view_func=view, methods=["GET", "POST"])
    return bp
