"""The release: ``python -m build`` makes an sdist and a wheel, and the wheel runs the demo.

Issue 18's acceptance, run as a user would: the sdist and the wheel are built with
``python -m build`` from a copy of this checkout (so the checkout gets no ``build/`` or
``*.egg-info`` of this run), the wheel is installed into a fresh venv, and that venv's
``rtgevent demo`` serves the chat page, ``rtgevent.js`` and the WebSocket.

Offline: ``--no-isolation`` builds with this environment's setuptools and wheel (the dev
extra installs ``build`` and ``wheel``), the venv sees this environment's packages
(``--system-site-packages``) for the dependencies, and pip installs the wheel alone with
``--no-index --no-deps``.  The venv's own copy must win over the editable install of this
checkout: the test runs it from a directory outside the checkout, without ``PYTHONPATH``,
and asserts where ``rtgevent`` was imported from.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

import rtgevent
from rtgevent.client import connect

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rtgevent"
#: ``python -m build`` (sdist, then the wheel from the unpacked sdist) must finish within this
BUILD_TIMEOUT = 180.0
#: any other step: venv, pip, one command
STEP_TIMEOUT = 60.0
#: the demo must accept connections within this
SERVE_TIMEOUT = 30.0

#: what the copy of the checkout leaves out: VCS data, caches and earlier build output
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.py[cod]",
    "*.egg-info",
    "build",
    "dist",
    "_build",
    ".tox",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
)
_RELEASE = re.compile(r"^## \[(?P<version>\d+\.\d+\.\d+[^\]]*)\] - (?P<date>\d{4}-\d{2}-\d{2})$", re.MULTILINE)


@dataclass(frozen=True)
class Built:
    source: Path
    sdist: Path
    wheel: Path

    def wheel_names(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as archive:
            return set(archive.namelist())

    def sdist_names(self) -> set[str]:
        """The sdist's files, without its top directory ``rtgevent-X.Y.Z/``."""
        top = f"rtgevent-{rtgevent.__version__}/"
        with tarfile.open(self.sdist) as archive:
            names = {member.name for member in archive.getmembers() if member.isfile()}
        assert all(name.startswith(top) for name in names), sorted(names)[:5]
        return {name.removeprefix(top) for name in names}


def _clean_env() -> dict[str, str]:
    """This environment less what would put the checkout on ``sys.path`` or reach an index."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(argv: list[str], cwd: Path, timeout: float = STEP_TIMEOUT) -> str:
    done = subprocess.run(argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _package_files(package: Path) -> set[str]:
    """Every file of the package as a wheel names it (``rtgevent/...``), caches left out."""
    return {
        path.relative_to(package.parent).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }


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


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist and the wheel of this checkout, as ``python -m build --no-isolation`` makes them."""
    missing = [name for name in ("build", "setuptools", "wheel") if find_spec(name) is None]
    if missing:
        pytest.fail(f"building the release needs {', '.join(missing)}: pip install -e '.[dev]'")
    work = tmp_path_factory.mktemp("release")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    out = work / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)], work, BUILD_TIMEOUT)
    version = rtgevent.__version__
    sdist = out / f"rtgevent-{version}.tar.gz"
    wheel = out / f"rtgevent-{version}-py3-none-any.whl"
    assert sorted(p.name for p in out.iterdir()) == sorted([sdist.name, wheel.name])
    return Built(source, sdist, wheel)


def test_the_version_is_the_changelogs_newest_release() -> None:
    """``rtgevent.__version__`` is the newest release of CHANGELOG.md, and setup.py names no version of its own."""
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = [match["version"] for match in _RELEASE.finditer(changelog)]
    assert releases, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' heading"
    assert releases[0] == rtgevent.__version__ == "0.2.0"
    assert "0.1.0" in releases
    setup_py = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert not re.search(r"""version\s*=\s*["']\d""", setup_py), "setup.py must read the version from rtgevent"


def test_the_wheel_holds_the_package_and_its_data(built: Built) -> None:
    """py.typed, rtgevent.js, the admin page and every other file of the package are in the wheel, nothing else is."""
    names = built.wheel_names()
    wanted = {"rtgevent/py.typed", "rtgevent/static/rtgevent.js", "rtgevent/static/demo.html"}
    if (PACKAGE / "static" / "admin.html").exists():
        wanted.add("rtgevent/static/admin.html")
    # every file of the built package: each module, and every page or script under static/
    wanted |= _package_files(built.source / "rtgevent")
    assert wanted - names == set()
    info = f"rtgevent-{rtgevent.__version__}.dist-info/"
    assert {n for n in names if not n.startswith(("rtgevent/", info))} == set()
    with zipfile.ZipFile(built.wheel) as archive:
        metadata = archive.read(info + "METADATA").decode()
        entry_points = archive.read(info + "entry_points.txt").decode()
    assert f"\nVersion: {rtgevent.__version__}\n" in metadata
    assert "rtgevent = rtgevent.cli:main" in entry_points


def test_the_sdist_holds_the_package_the_readme_and_the_changelog(built: Built) -> None:
    """The sdist has every package file the wheel has, plus README.md, CHANGELOG.md and what builds it."""
    names = built.sdist_names()
    package = {n for n in built.wheel_names() if n.startswith("rtgevent/")}
    assert package - names == set()
    assert {"README.md", "CHANGELOG.md", "setup.py", "pyproject.toml", "MANIFEST.in", "PKG-INFO"} - names == set()
    assert "tests/conftest.py" in names  # the tests come whole, helpers included
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_installs_in_a_fresh_venv_and_serves_the_demo(built: Built, tmp_path: Path) -> None:
    """In a fresh venv, the wheel's ``rtgevent demo`` serves the page, rtgevent.js and the chat's WebSocket."""
    venv = tmp_path / "venv"
    outside = tmp_path / "cwd"  # never the checkout: '' on sys.path would import its rtgevent
    outside.mkdir()
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], outside)
    python, pip, command = (venv / "bin" / name for name in ("python", "pip", "rtgevent"))
    _run(
        [str(pip), "install", "--no-index", "--no-deps", "--force-reinstall", "--ignore-installed", str(built.wheel)],
        outside,
    )

    where, version = _run(
        [str(python), "-c", "import rtgevent; print(rtgevent.__file__, rtgevent.__version__)"], outside
    ).split()
    installed = Path(where).resolve().parent
    assert installed.is_relative_to(venv.resolve()), f"rtgevent imported from {where}, not from the venv"
    assert version == rtgevent.__version__ == "0.2.0"
    assert "--bind" in _run([str(command), "demo", "--help"], outside)

    port = _free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [str(command), "demo", "--bind", f"127.0.0.1:{port}"],
            cwd=outside,
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not _answers(port):
            assert demo.poll() is None, f"rtgevent demo exited with {demo.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"rtgevent demo did not listen on {port}:\n{log.read_text()}"
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        cookies = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))

        # the page asks for a name first, then (with the login cookie) is the chat
        with browser.open(f"{base}/", timeout=10) as response:
            assert response.status == 200 and response.url == f"{base}/login"
            assert 'id="login"' in response.read().decode()
        form = urllib.parse.urlencode({"name": "release"}).encode()
        with browser.open(f"{base}/login", data=form, timeout=10) as response:
            assert response.status == 200 and response.url == f"{base}/"
            assert response.headers.get_content_type() == "text/html"
            page = response.read()
        assert page == (installed / "static" / "demo.html").read_bytes()
        assert b"<title>rtgevent chat</title>" in page and b'<script src="/ws/rtgevent.js">' in page

        with browser.open(f"{base}/ws/rtgevent.js", timeout=10) as response:
            assert response.status == 200
            assert "javascript" in response.headers.get_content_type()
            script = response.read()
        assert script == (installed / "static" / "rtgevent.js").read_bytes()
        assert b"RTGevent" in script

        # and the chat answers over the WebSocket, logged in by the same cookie
        cookie = "; ".join(f"{c.name}={c.value}" for c in cookies)
        with connect(f"ws://127.0.0.1:{port}/ws", headers={"Cookie": cookie}, timeout=10) as client:
            welcome = client.recv(timeout=10)
            assert welcome.route == "chat.welcome" and welcome.data["you"] == "release"
            assert client.request("chat.who", timeout=10) == {"online": ["release"]}

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(20) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGKILL)
            demo.wait(10)
