from setuptools import find_packages, setup

setup(
    name="rtgevent",
    version="0.1.0",
    description="A realtime WebSocket gateway framework for Python on gevent",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rtgevent", "rtgevent.*"]),
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
        ],
    },
    entry_points={"console_scripts": ["rtgevent=rtgevent.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Framework :: Flask"],
)
