"""The example chat: Flask login (a name in the session cookie), messages, who is online, DMs.

The code lives in the package (`rtgevent.demo`, `rtgevent/static/demo.html`) so that an
installed rtgevent runs it as ``rtgevent demo``; this script is the same app for a
checkout, and the shape to copy: monkey-patch first, build the Flask app, serve it.

Run it::

    python examples/chat/app.py                     # http://127.0.0.1:8000
    python examples/chat/app.py --bind 0.0.0.0:8080
    rtgevent serve examples.chat.app:app            # the same, through the serve command
    gunicorn -k gevent -c python:rtgevent.gunicorn examples.chat.app:app

then open the page in two browsers (or a normal and a private window), log in under two
names and talk.  Under gunicorn with several workers, set ``RTGEVENT_DEMO_SECRET`` so every
worker signs cookies with the same key, and give the Realtime a shared broker and presence
(the demo keeps them in-process).
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from rtgevent.demo import make_demo_app  # noqa: E402

app = make_demo_app()
#: the chat's Realtime (``app.extensions["rtgevent"]`` is where Flask extensions keep state)
rt = app.extensions["rtgevent"].realtime

if __name__ == "__main__":
    from rtgevent.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
