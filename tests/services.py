"""Redis and RabbitMQ for the tests: the machine's shared servers, and private ones.

The shared servers (`REDIS_URL`, `AMQP_URL`) are probed once per run (`LiveServices`,
the ``live`` fixture); a test that needs one and finds it down is skipped, not failed.
They are shared: a test must never stop them.  The tests that restart a broker
mid-traffic start their own instances on free ports instead, as children of the test
process (in their own process group), and stop only those.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
import uuid

import pytest

from tests.waiting import WAIT, wait_until

REDIS_URL = os.environ.get("RTG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("RTG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _address(url: str) -> tuple[str, int]:
    if url.startswith("redis+cluster://"):  # a private cluster of this run: not a shared server
        host, _, port = url.split("://", 1)[1].split(",", 1)[0].rstrip("/").rpartition(":")
        return host, int(port)
    parts = urllib.parse.urlsplit(url)
    default = 5672 if parts.scheme.startswith("amqp") else 6379
    return parts.hostname or "127.0.0.1", parts.port or default


@dataclasses.dataclass(frozen=True)
class LiveServices:
    """Which shared servers answered when the run began (host, port → answered)."""

    answered: dict[tuple[str, int], bool]

    @classmethod
    def probe(cls) -> LiveServices:
        addresses = {_address(REDIS_URL), _address(AMQP_URL)}
        return cls({address: _answers(*address) for address in addresses})

    def require(self, *urls: str | None) -> None:
        """Skip the test unless every shared server these URLs name answered.

        URLs of other servers (a private one on a free port, an address meant to be
        unreachable) are not the shared servers' business and are let through.
        """
        for url in urls:
            if url is None:
                continue
            address = _address(url)
            if not self.answered.get(address, True):
                pytest.skip(f"no server on {address[0]}:{address[1]} for {url.split('://', 1)[0]}://")


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: _answers("127.0.0.1", self.port), "redis to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a crash, not a clean shutdown
            self.proc.wait(timeout=WAIT)
        wait_until(lambda: not _answers("127.0.0.1", self.port), "redis to stop")


class RabbitServer:
    """A RabbitMQ node of its own (name, ports, data directory) beside the machine's."""

    def __init__(self) -> None:
        self.port = free_port()
        self.node = f"rtgtest{uuid.uuid4().hex[:8]}@localhost"
        self.dir = tempfile.mkdtemp(prefix="rtg-rabbit-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(os.path.join(self.dir, "plugins"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        os.chmod(self.dir, 0o777)
        for root, dirs, files in os.walk(self.dir):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o777)
        env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq.conf"),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "plugins"),
            RABBITMQ_FEATURE_FLAGS_FILE=os.path.join(self.dir, "feature_flags"),
        )
        self.proc = subprocess.Popen(
            ["rabbitmq-server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(lambda: _answers("127.0.0.1", self.port), "rabbitmq to listen", timeout=3 * WAIT)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], capture_output=True, timeout=60)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=WAIT)
        wait_until(lambda: not _answers("127.0.0.1", self.port), "rabbitmq to stop")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
