"""gunicorn with its gevent worker (rtgevent does the WebSocket handshake itself).

    gunicorn -c examples/gunicorn/gevent.conf.py examples.multinode.app:app

With several workers, give the app a shared broker and presence (examples/multinode does):
a client connected to one worker is reached from a request handled by another.
"""

from rtgevent.gunicorn import post_worker_init  # noqa: F401  (1001 to every client on SIGTERM / SIGHUP)

worker_class = "gevent"
workers = 2
bind = "127.0.0.1:8000"
graceful_timeout = 30
# max_requests works with this worker (it restarts a worker after N requests; WebSocket
# sessions count once, when they open).
