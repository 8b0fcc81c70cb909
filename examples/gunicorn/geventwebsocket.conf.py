"""gunicorn with gevent-websocket's worker (it sends the 101; rtgevent takes the socket over).

    gunicorn -c examples/gunicorn/geventwebsocket.conf.py examples.multinode.app:app

Refusals here are close frames, not HTTP statuses: 1008 for Origin or authentication, 1013
for the connection limit or shutdown.  ``max_requests`` does not apply to this worker.
"""

from rtgevent.gunicorn import post_worker_init  # noqa: F401  (1001 to every client on SIGTERM / SIGHUP)

worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
workers = 2
bind = "127.0.0.1:8000"
graceful_timeout = 30
