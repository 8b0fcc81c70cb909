"""rtgevent's benchmark suite (not a test: the test suite never runs it).

``python -m bench [idle] [echo] [--quick] [--runs N]`` starts each server under test in
its own process pinned to CPU 0, drives it from a gevent load generator pinned to CPU 1,
reads the server's memory and CPU from ``/proc`` and prints every rtgevent figure next to
the same figure for Flask-SocketIO 5.x measured in the same run.  See ``bench/README.md``.
"""
