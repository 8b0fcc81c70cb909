"""Gateway processes for the tests: ``rtgevent serve`` children with their output kept."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from typing import Any

import gevent

from tests.conftest import ROOT
from tests.waiting import WAIT


class ServeProcess:
    """``python -m rtgevent serve APP --bind 127.0.0.1:0 ...``; the port is read from its first line."""

    def __init__(self, app: str, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        cmd = [sys.executable, "-m", "rtgevent", "serve", app, "--bind", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        with gevent.Timeout(WAIT, AssertionError(f"serve did not start: {self.lines}")):
            for raw in self.proc.stdout:
                line = raw.decode().rstrip()
                self.lines.append(line)
                m = re.search(r"serving on (https?)://([\d.]+):(\d+)", line)
                if m:
                    self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
                    break
            else:
                raise AssertionError("serve exited:\n" + "\n".join(self.lines))
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip())

    @property
    def ws_base(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def control(self, action: str, **query: Any) -> Any:
        qs = urllib.parse.urlencode(query)
        url = f"http://{self.host}:{self.port}/_control/{action}?{qs}"
        with urllib.request.urlopen(url, timeout=WAIT) as resp:
            return json.loads(resp.read())

    def kill(self) -> None:
        """SIGKILL: the node dies without cleaning anything up."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)
