"""Debian's Chromium as Playwright must launch it here, and what "an image is drawn" means
(shared with bench/browser.py).

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

# "An image is drawn" on a cornerstone canvas: some pixel that is not black. A JavaScript
# function declaration, for the page scripts that need it.
CANVAS_SHOWS_IMAGE_JS = """function canvasShowsImage(canvas) {
  if (!canvas.width || !canvas.height) { return false; }
  const context = canvas.getContext("2d", { willReadFrequently: true });
  if (!context) { return false; }
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i] || pixels[i + 1] || pixels[i + 2]) { return true; }
  }
  return false;
}"""
