"""The documentation builds without a warning, and every Python example in it runs.

Every ``.. code-block:: python`` of ``docs/*.rst`` is run in a fresh interpreter, in a
directory of its own, and must exit 0.  How a block is run is said by reST comments
right before it (comments are not rendered, so readers see plain examples)::

    .. doc-test: file NAME          the block is the file NAME: the later blocks of the page
                                    find it in their directory; on its own it is imported
                                    (``__name__`` is not ``"__main__"``), unless it is also
                                    ``serve`` or ``forever``: then it is run
    .. doc-test: serve [ws=PATH] [drain] [name=NAME]
                                    a server: it must accept TCP on its port; with ws=PATH a
                                    WebSocket client connects to PATH; SIGTERM must end the
                                    process with status 0, and with ``drain`` the client must
                                    get close code 1001 first.  ``name=`` lets other blocks
                                    run against it
    .. doc-test: server NAME        run while the serve block NAME serves
    .. doc-test: pytest             the block is a test module, run with pytest
    .. doc-test: forever            a worker that runs until stopped: it must still run
                                    after a few seconds
    .. doc-test: requires MODULE    skipped unless MODULE can be imported
    .. doc-test: skip REASON        not run (keep these few)

A ``.. code-block:: console`` block with a ``serve`` comment is run too: its ``$`` line
is the command (``rtgevent``, ``gunicorn`` and ``python`` run under this interpreter).

Two substitutions let the examples run next to other test runs on a shared machine:
``myapp`` (the namespace and queue names of the examples) becomes a name unique to this
run, and in serving blocks port 8000 becomes a free port (``0.0.0.0``: ``127.0.0.1``).
A block that names ``redis://`` or ``amqp://`` is skipped when that service does not
answer on 127.0.0.1; one that names ``redis+cluster://`` gets the shared test cluster's URL
(`tests.rediscluster`) in ``REDIS_CLUSTER_URL``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import rtgevent
from rtgevent.client import ClientClosed, connect

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: one script must finish within this (seconds)
TIMEOUT = 60.0
#: a server must accept connections within this
START_TIMEOUT = 30.0
#: how long a ``forever`` worker must keep running
FOREVER_FOR = 2.0
#: gunicorn keeps a worker that is told to stop while it boots until ``graceful_timeout``
#: (30 s): its workers get this long to boot before the test stops the server
GUNICORN_BOOT = 2.0
UNIQUE = f"docs{uuid.uuid4().hex[:10]}"

_DIRECTIVE = re.compile(r"^(?P<indent>[ ]*)\.\. (?P<kind>code-block|code|sourcecode|testcode)::[ ]*(?P<lang>\S*)[ ]*$")
_NOTE = re.compile(r"^[ ]*\.\. doc-test: (?P<note>.+?)[ ]*$")
_OPTION = re.compile(r"^[ ]+:[\w-]+:")
_MODES = {"file", "serve", "server", "pytest", "forever", "requires", "skip"}


@dataclasses.dataclass
class Block:
    page: str
    line: int
    language: str
    source: str
    notes: dict[str, list[str]]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def filename(self) -> str | None:
        names = self.notes.get("file")
        return names[0] if names else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def parse_page(path: Path) -> list[Block]:
    """The code blocks of one page with the ``doc-test`` notes in front of each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    attached: set[int] = set()
    for number, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if match is None:
            continue
        if match["kind"] != "code-block" and match["lang"] in ("python", "py", "python3", ""):
            raise AssertionError(f"{path.name}:{number + 1}: write Python examples as `.. code-block:: python`")
        indent = len(match["indent"])
        cursor = number + 1
        while cursor < len(lines) and _OPTION.match(lines[cursor]) and _indent(lines[cursor]) > indent:
            cursor += 1
        body: list[str] = []
        while cursor < len(lines) and (not lines[cursor].strip() or _indent(lines[cursor]) > indent):
            body.append(lines[cursor])
            cursor += 1
        notes: dict[str, list[str]] = {}
        back = number - 1
        while back >= 0 and (not lines[back].strip() or _NOTE.match(lines[back])):
            note = _NOTE.match(lines[back])
            if note is not None:
                attached.add(back)
                mode, _, rest = note["note"].partition(" ")
                if mode not in _MODES:
                    raise AssertionError(f"{path.name}:{back + 1}: unknown doc-test mode {mode!r}")
                notes.setdefault(mode, []).extend(rest.split() if mode != "skip" else [rest])
            back -= 1
        source = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks.append(Block(path.name, number + 1, match["lang"], source, notes))
    for number, line in enumerate(lines):
        if _NOTE.match(line) and number not in attached:
            raise AssertionError(f"{path.name}:{number + 1}: a doc-test note must stand right before a code block")
    return blocks


def _all_blocks() -> list[Block]:
    return [block for page in sorted(DOCS.glob("*.rst")) for block in parse_page(page)]


ALL_BLOCKS = _all_blocks()
RUNNABLE = [b for b in ALL_BLOCKS if b.language == "python" or (b.language == "console" and "serve" in b.notes)]
NAMED = {
    name.removeprefix("name="): b for b in RUNNABLE for name in b.notes.get("serve", []) if name.startswith("name=")
}


# ---------------------------------------------------------------------- the build


def test_sphinx_build_has_no_warning(tmp_path: Path) -> None:
    """``sphinx-build -W --keep-going``: every page, the API reference from the docstrings, no warning."""
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    for page in sorted(DOCS.glob("*.rst")):
        assert (tmp_path / "html" / f"{page.stem}.html").is_file(), page.name


def test_api_page_documents_every_public_name() -> None:
    """Every name ``rtgevent`` exports has its entry on the API page."""
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto(?:class|function|exception|data):: (\w+)", text, re.MULTILINE))
    missing = sorted(set(rtgevent.__all__) - {"__version__"} - documented)
    assert not missing, f"docs/api.rst has no entry for {missing}"


def test_every_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^   (\w+)$", index, re.MULTILINE))
    pages = {page.stem for page in DOCS.glob("*.rst")} - {"index"}
    assert pages <= listed, f"not in the index toctree: {sorted(pages - listed)}"


def test_examples_were_found() -> None:
    """The parser sees the examples (a broken pattern would make every example test vanish)."""
    assert len([b for b in RUNNABLE if b.language == "python"]) >= 20
    skipped = [b.id for b in RUNNABLE if "skip" in b.notes]
    assert len(skipped) <= 3, f"too many examples are not run: {skipped}"


# ---------------------------------------------------------------------- running the examples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _substitute(source: str, port: int | None) -> str:
    source = source.replace("myapp", UNIQUE)
    if port is not None:
        source = re.sub(r"\b8000\b", str(port), source).replace("0.0.0.0", "127.0.0.1")
    return source


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.pop("RTGEVENT_BROKER_URL", None)
    env.pop("RTGEVENT_PRESENCE_URL", None)
    return env


def _prepare(block: Block, workdir: Path, port: int | None) -> None:
    """Write the page's ``file`` blocks that come before ``block`` (and ``block`` itself if it is one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for other in ALL_BLOCKS:
        if other.page == block.page and other.filename and other.line <= block.line:
            (workdir / other.filename).write_text(_substitute(other.source, port), encoding="utf-8")


def _command(block: Block, workdir: Path, port: int | None) -> list[str]:
    """The argv that runs ``block`` as a program."""
    if block.language == "console":
        commands = [line[2:] for line in block.source.splitlines() if line.startswith("$ ")]
        assert len(commands) == 1, f"{block.id}: a served console block has exactly one `$ ` line"
        argv = shlex.split(_substitute(commands[0], port))
        if argv[0] in ("rtgevent", "gunicorn"):
            return [sys.executable, "-m", argv[0], *argv[1:]]
        if argv[0] in ("python", "python3"):
            return [sys.executable, *argv[1:]]
        return argv
    script = block.filename or "example.py"
    if not block.filename:
        (workdir / script).write_text(_substitute(block.source, port), encoding="utf-8")
    return [sys.executable, script]


def _requirements(block: Block) -> None:
    if "skip" in block.notes:
        pytest.skip(f"{block.id}: {block.notes['skip'][0]}")
    for module in block.notes.get("requires", []):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{block.id} needs {module}")
    text = block.source
    server = NAMED.get(block.notes["server"][0]) if "server" in block.notes else None
    if server is not None:
        text += server.source
    if ("redis://" in text or "kombu+redis://" in text) and not _answers(6379):
        pytest.skip("no Redis on 127.0.0.1:6379")
    if "amqp://" in text and not _answers(5672):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")


def _output(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-6000:] if log.exists() else ""


class Running:
    """A serving block, started in its own process group and always stopped."""

    def __init__(self, block: Block, workdir: Path, port: int) -> None:
        self.block = block
        self.port = port
        self.log = workdir / "server.log"
        _prepare(block, workdir, port)
        argv = _command(block, workdir, port)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=workdir, env=_env(workdir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{block.id} exited with {self.proc.returncode}:\n{_output(self.log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{block.id} did not listen on port {port}:\n{_output(self.log)}")
            time.sleep(0.1)
        if "gunicorn" in argv[:3]:
            time.sleep(GUNICORN_BOOT)

    def stop(self) -> int:
        """SIGTERM, and the exit status (the process is killed if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.block.id} did not exit on SIGTERM:\n{_output(self.log)}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module", autouse=True)
def _clean_services() -> Iterator[None]:
    """Afterwards, drop what the examples left in Redis and RabbitMQ under this run's name."""
    yield
    if _answers(6379):
        import redis

        for db in (0, 1):
            client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_timeout=5)
            keys = list(client.scan_iter(match=f"{UNIQUE}*"))
            if keys:
                client.delete(*keys)
            client.close()
    queues = {_substitute(name, None) for b in ALL_BLOCKS for name in re.findall(r'queue="(myapp[^"]*)"', b.source)}
    if queues and _answers(5672):
        import kombu

        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=5) as conn:
            for name in sorted(queues):
                try:
                    with conn.channel() as channel:  # a channel each: deleting a missing queue closes it
                        channel.queue_delete(name)
                except Exception:
                    pass  # never declared in this run


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for server in started:
        server.kill()


def _serve(block: Block, workdir: Path, started: list[Running]) -> None:
    server = Running(block, workdir, _free_port())
    started.append(server)
    args = block.notes["serve"]
    path = next((a.removeprefix("ws=") for a in args if a.startswith("ws=")), None)
    if path is None:
        assert server.stop() == 0, _output(server.log)
        return
    client = connect(f"ws://127.0.0.1:{server.port}{path}", timeout=10)
    try:
        if "drain" in args:
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ClientClosed) as closed:
                while True:
                    client.recv(timeout=15)
            assert closed.value.code == 1001, f"{block.id}: closed with {closed.value.code}:\n{_output(server.log)}"
    finally:
        client.close()
    assert server.stop() == 0, _output(server.log)


def _run(block: Block, workdir: Path, port: int | None) -> None:
    _prepare(block, workdir, port)
    if "pytest" in block.notes:
        name = block.filename or "test_example.py"
        if not block.filename:
            (workdir / name).write_text(_substitute(block.source, port), encoding="utf-8")
        # the examples need no plugin, and loading every installed one takes seconds
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
    elif block.filename and "forever" not in block.notes:
        code = f"import runpy; runpy.run_path({block.filename!r}, run_name='docs_example')"
        argv = [sys.executable, "-c", code]
    else:
        argv = _command(block, workdir, port)
    log = workdir / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=_env(workdir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if "forever" in block.notes:
                time.sleep(FOREVER_FOR)
                assert proc.poll() is None, f"{block.id} stopped with {proc.returncode}:\n{_output(log)}"
                return
            status = proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{block.id} ran past {TIMEOUT} s:\n{_output(log)}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    assert status == 0, f"{block.id} exited with {status}:\n{_output(log)}"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_example(
    block: Block,
    tmp_path: Path,
    running: list[Running],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _requirements(block)
    if "redis+cluster://" in block.source:  # the example reads the cluster's URL from the environment
        monkeypatch.setenv("REDIS_CLUSTER_URL", request.getfixturevalue("redis_cluster").url)
    if "serve" in block.notes:
        _serve(block, tmp_path / "work", running)
    elif "server" in block.notes:
        name = block.notes["server"][0]
        assert name in NAMED, f"{block.id}: no serve block is named {name!r}"
        server = Running(NAMED[name], tmp_path / "server", _free_port())
        running.append(server)
        _run(block, tmp_path / "work", server.port)
        assert server.stop() == 0, _output(server.log)
    else:
        _run(block, tmp_path / "work", None)
