"""The API under uvicorn in a process of its own, on a free loopback port, for tests that need real
HTTP (load, fuzzing): started, waited for until /v1/health answers 200, terminated afterwards; or in a
thread of the test process for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def served_api(env: dict[str, str], log_path: Path, *extra_args: str, start_timeout_s: float = 30) -> Iterator[str]:
    """Yields the base URL. The server's output goes to `log_path` (its tail is in any failure)."""
    from service.embedded import free_port

    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log", *extra_args],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"the API exited: {log_path.read_text(errors='replace')[-2000:]}")
                try:
                    if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the API did not answer /v1/health in {start_timeout_s:.0f}s: "
                                f"{log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@contextmanager
def api_in_thread(start_timeout_s: float = 10) -> Iterator[str]:
    """The API in a thread of the test process, with the test's settings (the CLI tests speak HTTP to
    it). Yields the base URL; stopped afterwards."""
    import threading

    import uvicorn

    from service.app import create_app
    from service.embedded import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
