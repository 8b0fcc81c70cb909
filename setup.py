import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    """The one version of the project: ``__version__`` in rtgevent/__init__.py, read as text.

    Not imported: building must not need the package's dependencies, nor run its code.
    """
    text = (HERE / "rtgevent" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise RuntimeError('rtgevent/__init__.py has no line __version__ = "..."')
    return found.group(1)


setup(
    name="rtgevent",
    version=read_version(),
    description="A realtime WebSocket gateway framework for Python on gevent",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rtgevent", "rtgevent.*"]),
    # static/: rtgevent.js, the demo and the admin page, served from the installed package
    package_data={"rtgevent": ["py.typed", "static/*"]},
    install_requires=[
        "gevent>=24.2",
        "greenlet>=3.0",
        "flask>=3.0",
        "werkzeug>=3.0",
        "gevent-websocket>=0.10.1",
        "websockets>=14.0",
        "orjson>=3.9",
    ],
    extras_require={
        "kombu": ["kombu[redis]>=5.4"],
        "redis": ["redis>=5.0"],
        "gunicorn": ["gunicorn[gevent]>=23.0"],
        "prometheus": ["prometheus-client>=0.20"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "websocket-client>=1.8",
            "gunicorn[gevent]>=23.0",
            "kombu[redis]>=5.4",
            "redis>=5.0",
            "mypy>=1.10",
            "ruff>=0.5",
            "flask-socketio>=5.3",
            "playwright>=1.40",
            "prometheus-client>=0.20",
            "sphinx>=7.2,<7.4",  # 7.3 is the last Sphinx that keeps docutils 0.19, which other tools pin
            # tests/test_release.py builds the sdist and wheel with `python -m build --no-isolation`
            # (no download): build itself, and wheel, which setuptools before 70.1 needs for a wheel
            "build>=1.0",
            "wheel>=0.40",
        ],
    },
    entry_points={"console_scripts": ["rtgevent=rtgevent.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Framework :: Flask"],
)
