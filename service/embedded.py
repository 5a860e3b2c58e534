"""Start the embedded servers a single box needs when nothing is running: SeaweedFS (S3, credentials
always set) and Redis. Used by `xraysynth run` and by the test suite, so both exercise the same code."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen
    endpoint: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Start the same command again (tests use this to end a simulated outage)."""
        self.stop()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.endpoint.startswith("redis://"):
            _wait_port(self)
        else:
            _wait_http(self.endpoint, self)


def _which(binary: str) -> str:
    # Prefer the binary installed next to this interpreter (the project's venv).
    local = Path(sys.executable).parent / binary
    found = str(local) if local.exists() else shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} not found; run `make install`")
    return found


def _wait_http(url: str, server: ServerProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early; see {server.log_path}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer on {url} within {timeout}s; see {server.log_path}")


def start_seaweedfs(data_dir: Path, *, access_key: str, secret_key: str, s3_port: int | None = None) -> ServerProcess:
    """`weed mini` on loopback with every port chosen here (so several can run side by side)."""
    if not access_key or not secret_key:
        raise ValueError("refusing to start an S3 server without credentials")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "xraysynth",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    s3_port = s3_port or free_port()
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
    )}
    args = [
        _which("weed"), "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-metricsPort=0",
        *[f"-{k}={v}" for k, v in ports.items()],
    ]
    log_path = data_dir / "weed.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess("seaweedfs", proc, f"http://127.0.0.1:{s3_port}", log_path, args)
    _wait_http(server.endpoint, server)
    return server


def start_redis(data_dir: Path, port: int | None = None) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        _which("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(data_dir),
    ]
    log_path = data_dir / "redis.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess("redis", proc, f"redis://127.0.0.1:{port}", log_path, args)
    _wait_port(server)
    return server


def _wait_port(server: ServerProcess, timeout: float = 10) -> None:
    host, port = server.endpoint.split("://", 1)[1].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while not port_open(host, int(port)):
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not start; see {server.log_path}")
        time.sleep(0.05)


def environ_with(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
