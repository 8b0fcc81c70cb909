"""``python -m rtgevent``: the command line."""

from .cli import main

raise SystemExit(main())
