"""The rules of the house (docs/architecture.md), checked on the source itself.

Read from the code's own import statements with ``ast`` (nothing is imported): every
import an ``if TYPE_CHECKING:`` block or a function body makes counts too, since a lazy
import is still an arrow between two rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtgevent"

#: the house from the ground up: a room imports rooms of its own floor or below, never above
FLOORS: list[set[str]] = [
    {"errors"},
    {
        "types",
        "config",
        "message",
        "ids",
        "retry",
        "stats",
        "payload",
        "router",
        "lifecycle",
        "channels",
        "history.base",
    },
    {
        "codec",
        "outbox",
        "threadsafe",
        "auth",
        "transport.frames",
        "transport.handshake",
        "transport.assembler",
        "transport.protocol",
        "transport.heartbeat",
        "broker.base",
        "presence.base",
        "broker.local",
        "presence.memory",
        "history.memory",
        "positions",
    },
    {"transport.acquire", "transport.connection", "session", "hub", "middleware", "broker._consumer", "streams"},
    {
        "broker.redis",
        "broker.redis_cluster",
        "broker.kombu",
        "broker",
        "presence.redis",
        "presence",
        "events",
        "history.redis",
        "history",
    },
    {"delivery", "gate", "rooms"},
    {"app", "node", "emitter"},
    {"realtime", "testing", "flask", "metrics", "client", "admin"},
    {"gunicorn", "transport.server", "demo", "cli", "__main__", "transport", ""},
]

#: rooms that may never import gevent, a socket or anything but other pure rooms
PURE = {
    "errors",
    "types",
    "config",
    "message",
    "ids",
    "router",
    "codec",
    "outbox",
    "lifecycle",
    "payload",
    "stats",
    "channels",
    "history.base",
    "positions",
    "transport.frames",
    "transport.handshake",
    "transport.assembler",
    "transport.protocol",
    "transport.heartbeat",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, int]]:
    """(imported name, line) for every import in module ``name``, relative ones resolved."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.module or "", node.lineno))
                continue
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            out.append(("rtgevent." + target if target else "rtgevent", node.lineno))
            out.extend((f"rtgevent.{target}.{a.name}".replace("..", "."), node.lineno) for a in node.names)
    return out


def _internal(name: str) -> set[str]:
    """The rtgevent modules ``name`` imports (a package's own submodules not counted)."""
    edges = set()
    for imported, _ in _imports(name):
        if imported == "rtgevent":
            target = ""
        elif imported.startswith("rtgevent."):
            target = imported.removeprefix("rtgevent.")
        else:
            continue
        if target in MODULES and target != name:
            edges.add(target)
    return edges


def _floor(name: str) -> int:
    for level, floor in enumerate(FLOORS):
        if name in floor:
            return level
    raise AssertionError(f"rtgevent.{name} is on no floor of the house: add it to FLOORS in {__name__}")


def test_every_module_has_a_floor() -> None:
    """Each module of the package is placed on one floor of the house, and no floor names a missing one."""
    placed = set().union(*FLOORS)
    assert set(MODULES) - placed == set()
    assert placed - set(MODULES) == set()


def test_no_room_imports_a_room_above_it() -> None:
    """Imports go down the house or along a floor: a lower room never reaches into a higher one."""
    wrong = [
        f"{name} (floor {_floor(name)}) imports {target} (floor {_floor(target)})"
        for name in MODULES
        for target in _internal(name)
        if _floor(target) > _floor(name) and not target.startswith(f"{name}.")
    ]
    assert wrong == []


def test_the_import_graph_has_no_circle() -> None:
    """No chain of imports leads back to where it started (type-only and lazy imports included)."""
    graph = {
        name: {t for t in _internal(name) if not t.startswith(f"{name}.") and not name.startswith(f"{t}.")}
        for name in MODULES
    }
    graph[""] = set()  # the package's lazy table names everything; it is the top, never imported back
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_pure_rooms_import_no_gevent_no_socket_and_only_pure_rooms() -> None:
    """Pure rooms (codec, router, outbox, lifecycle, handshake...) stay free of sockets and greenlets."""
    wrong = []
    for name in PURE:
        for imported, line in _imports(name):
            top = imported.split(".")[0]
            if top in {"gevent", "greenlet", "socket", "ssl", "select", "kombu", "redis"}:
                wrong.append(f"{name}:{line} imports {imported}")
        wrong.extend(f"{name} imports {t}" for t in _internal(name) if t not in PURE)
    assert wrong == []


def test_only_transport_touches_sockets() -> None:
    """socket and ssl are imported inside transport/ alone (refusal close frames included)."""
    wrong = [
        f"{name}:{line} imports {imported}"
        for name in MODULES
        if not name.startswith("transport")
        for imported, line in _imports(name)
        if imported.split(".")[0] in {"socket", "ssl", "select"}
    ]
    assert wrong == []


def test_kombu_and_redis_stay_in_their_rooms() -> None:
    """kombu only in broker/kombu.py and events.py; redis only in the Redis rooms and retry's client builder."""
    allowed = {
        "kombu": {"broker.kombu", "events"},
        "redis": {"broker.redis", "broker.redis_cluster", "presence.redis", "history.redis", "retry"},
    }
    wrong = [
        f"{name}:{line} imports {imported}"
        for name in MODULES
        for imported, line in _imports(name)
        for lib, rooms in allowed.items()
        if imported.split(".")[0] == lib and name not in rooms
    ]
    assert wrong == []


def test_no_room_but_the_top_imports_the_facade() -> None:
    """Rooms take the core's public API: only the entry points (CLI, gunicorn hook, demo, metrics) import realtime."""
    importers = {name for name in MODULES if "realtime" in _internal(name)}
    assert importers <= {"", "cli", "gunicorn", "demo", "metrics"}
