"""The Node ``ws`` server and load generator of the comparison (``bench/node/``): whether they can
run, their install, their commands.

``ws`` is pinned by ``bench/node/package-lock.json`` and installed into
``bench/node/node_modules`` with ``npm ci`` the first time a scenario needs it, so a checkout
carries no Node packages.  Without ``node`` or ``npm`` on ``PATH`` (or when the install
fails) the driver leaves the Node rows out and says why, instead of failing the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

#: `bench.common` imports this module, so the path is found here rather than imported from there
NODE_DIR = Path(__file__).resolve().parent / "node"
#: bound on ``npm ci`` (one small package from the registry)
INSTALL_TIMEOUT = 300.0


def unavailable() -> str | None:
    """None when the Node server can run (installing ``ws`` first if needed); otherwise why not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "Node rows skipped: node and npm are needed on PATH (the Node ws server, bench/node/)"
    if (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return None
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Node rows skipped: npm ci in bench/node failed: {exc}"
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return f"Node rows skipped: npm ci in bench/node exited {done.returncode}: {tail}"
    return None


def server_command() -> list[str]:
    """The Node server, without CPU pinning: ``READY <port>`` on stdout, like `bench.servers`."""
    return [shutil.which("node") or "node", str(NODE_DIR / "server.js"), "--port", "0"]


def receiver_command() -> list[str]:
    """The Node load generator of ``fanout-node`` (``bench/node/receiver.js``), before its arguments."""
    return [shutil.which("node") or "node", str(NODE_DIR / "receiver.js")]


def versions() -> str:
    """``Node vX, ws Y`` for the table's conditions; ``?`` where unknown."""
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        node = "?"
    try:
        ws = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        ws = "?"
    return f"Node {node or '?'}, ws {ws}"
