"""Debian's Chromium as Playwright must launch it here (shared with bench/browser.py).

Playwright never downloads a browser on this machine: the `chromium` Debian package comes from
TEST_DEBIAN_PACKAGES in the Makefile. Without the background-networking flags Chromium keeps
trying to reach Google's hosts, which the closed network refuses.
"""

import os

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
