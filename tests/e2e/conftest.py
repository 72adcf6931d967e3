"""Browser fixtures: one headless Debian Chromium for the package, one context per scenario.

Playwright's sync API runs an asyncio loop in the main thread, which makes Django refuse ORM
calls from the test (SynchronousOnlyOperation) although nothing here is asynchronous.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.journey import ARTIFACTS, Journey
from tests.stack import Stack


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def journey(
    browser: Browser, live_stack: Stack, request: pytest.FixtureRequest
) -> Iterator[Journey]:
    """A fresh browser context (no cookies, no cache) for one scenario, named after the test."""
    scenario = request.node.name.removeprefix("test_")
    with Journey.open(browser, live_stack, scenario) as opened:
        yield opened
