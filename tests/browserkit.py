"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium, driven by Playwright.

One place for the binary, its flags, the page timeout and the ``browser`` fixture (which
conftest.py makes every test module's, like `tests.clusterkit`'s ``cluster``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.waiting import WAIT

CHROMIUM = "/usr/bin/chromium"
#: milliseconds, for Playwright: generous, the machine is a busy 2-core box
WAIT_MS = int(WAIT * 1000)
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: ``pytestmark = needs_chromium`` in a module that drives the browser
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")


@pytest.fixture
def browser() -> Iterator[Any]:
    """One headless Chromium for the test; pages get their own contexts (cookie jars)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
