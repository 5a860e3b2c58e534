"""Browser tests: the real app served by uvicorn on a free loopback port (same process, so it sees the
test infra and settings), driven by Playwright through Debian's headless chromium.

Screenshots of every page visited go to $XRAYSYNTH_SCREENSHOT_DIR/<test name>/ when that is set, else to
the test's tmp_path/screenshots, for a person to look at.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Fixtures that run real workers on the toy model (re-exported for the researcher journey).
from tests.workers.conftest import model_version, start_worker, toy_model  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def live_url(infra) -> Iterator[str]:
    """The whole app (REST + console) on a real port, in a thread of the test process."""
    import uvicorn

    from service.app import create_app
    from service.embedded import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(request, tmp_path) -> Path:
    root = os.environ.get("XRAYSYNTH_SCREENSHOT_DIR")
    folder = Path(root) / re.sub(r"[^\w.-]+", "_", request.node.name) if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def new_page(browser, live_url, shots, clean) -> Iterator[Callable]:
    """A fresh browser (own cookies) per call; every page records the console errors it hit."""
    contexts = []

    def make(javascript: bool = True):
        ctx = browser.new_context(base_url=live_url, viewport={"width": 1200, "height": 900},
                                  java_script_enabled=javascript)
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()
        # Script errors and CSP refusals; a 4xx page the test asked for is not one.
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def shot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, key: str) -> None:
    page.goto("/ui/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/$"))
