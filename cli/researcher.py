"""Researcher commands, over HTTP only (no database, no torch): `request` and `download`.

    xraysynth request --condition Mass=100 --condition Effusion=50 --purpose "..."
    xraysynth download <dataset-id> --out ./data

The API URL and key come from --api-url / --api-key or XRAYSYNTH_API_URL / XRAYSYNTH_API_KEY.
Downloads run in parallel, resume partial files with HTTP Range, verify every sha256, and fetch
fresh signed URLs once if the ones in hand expire mid-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

DEFAULT_API_URL = "http://127.0.0.1:8000"
CHUNK = 1 << 20
MIN_REFRESH_EXPIRY_S = 300
# A 429 (the per-key rate limit, which the console and other scripts share) or a 503 with Retry-After
# means the API did nothing: wait as told and send again, up to this long per request.
MAX_RETRY_AFTER_WAIT_S = 300.0
# `download --wait` outlives API restarts (make run restarts a dead API): connection errors are retried
# for this long in a row before giving up.
MAX_UNREACHABLE_S = 300.0

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="XRAYSYNTH_API_URL", help="API base URL.")]
ApiKey = Annotated[str, typer.Option("--api-key", envvar="XRAYSYNTH_API_KEY", help="Your API key.",
                                     show_default=False)]


class DownloadError(Exception):
    pass


def _retry_after(response) -> float | None:
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _patient_transport():
    import httpx

    class PatientTransport(httpx.HTTPTransport):
        """Waits out 429/503 answers that say when to come back, instead of failing the command."""

        def handle_request(self, request):
            waited = 0.0
            while True:
                response = super().handle_request(request)
                delay = _retry_after(response)
                if delay is None or waited + delay > MAX_RETRY_AFTER_WAIT_S:
                    return response
                response.read()
                err_console.print(f"[yellow]{escape(_api_error(response))}; waiting {delay:.0f} s[/]")
                response.close()
                time.sleep(delay)
                waited += delay

    return PatientTransport()


def _client(api_url: str, api_key: str):
    import httpx

    if not api_key:
        err_console.print("[red]no API key:[/] pass --api-key or set XRAYSYNTH_API_KEY")
        raise typer.Exit(2)
    return httpx.Client(base_url=api_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
                        timeout=httpx.Timeout(30.0, connect=10.0), transport=_patient_transport())


def _api_error(r) -> str:
    """The API's error as plain text (callers print it escaped: it may hold brackets, which rich would
    otherwise take for markup: the [code] vanished and '[/x]' in a message crashed the command)."""
    try:
        err = r.json().get("error", {})
        field = f" ({err['field']})" if err.get("field") else ""
        return f"{err.get('message', r.text)}{field} [{err.get('code', r.status_code)}]"
    except (ValueError, AttributeError):
        return f"HTTP {r.status_code}"


# ------------------------------------------------------------------------------------------- request


def parse_conditions(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, count = item.rpartition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=COUNT, e.g. Mass=100", param_hint="--condition")
        try:
            out[name.strip()] = out.get(name.strip(), 0) + int(count)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: the count must be a whole number", param_hint="--condition") from None
    return out


def request(
    condition: Annotated[list[str], typer.Option("--condition", "-c", help="NAME=COUNT; repeat for more conditions.")],
    purpose: Annotated[str, typer.Option(help="What the images are for (read by the reviewing admins).")],
    model: Annotated[Optional[str], typer.Option(help='Model id or "name:version" (default: newest fitting).')] = None,
    format: Annotated[str, typer.Option("--format", help="png or dicom.")] = "png",
    heatmaps: Annotated[bool, typer.Option("--heatmaps/--no-heatmaps", help="Grad-CAM heatmap per image.")] = True,
    seed: Annotated[Optional[int], typer.Option(help="Fix every image (same model + seed = same pixels).")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> None:
    """Request a synthetic dataset; it waits for a hospital admin's review."""
    body: dict = {"conditions": parse_conditions(condition), "purpose": purpose, "format": format, "heatmaps": heatmaps}
    if model:
        body["model"] = model
    if seed is not None:
        body["seed"] = seed
    with _client(api_url, api_key) as http:
        r = http.post("/v1/datasets", json=body)
    if r.status_code >= 400:
        err_console.print(f"[red]request refused:[/] {escape(_api_error(r))}")
        raise typer.Exit(1)
    ds = r.json()
    console.print(f"[green]requested[/] dataset [bold]{ds['id']}[/]: {ds['total_images']} images, "
                  f"status {ds['status']}")
    console.print(f"download it once approved and generated:  xraysynth download {ds['id']} --out DIR --wait")


# ------------------------------------------------------------------------------------------ download


class Manifest:
    """The download manifest (signed URLs), refreshed at most once when the URLs expire mid-way."""

    def __init__(self, http, dataset_id: str, expires_in: int | None):
        self.http, self.dataset_id, self.expires_in = http, dataset_id, expires_in
        self.lock = threading.Lock()
        self.generation = 0
        self.refreshes = 0
        self.files = self._fetch()

    def _fetch(self) -> dict[str, dict]:
        params = {"expires_in": self.expires_in} if self.expires_in else None
        r = self.http.get(f"/v1/datasets/{self.dataset_id}/download", params=params)
        if r.status_code >= 400:
            raise DownloadError(f"cannot get download links: {_api_error(r)}")
        return {f["name"]: f for f in r.json()["files"]}

    def url(self, name: str) -> tuple[str, int]:
        with self.lock:
            return self.files[name]["url"], self.generation

    def refresh(self, seen_generation: int) -> None:
        """Called on 403: one refresh for the whole download (threads that saw the same old URLs share it)."""
        with self.lock:
            if self.generation != seen_generation:
                return  # another thread already refreshed
            if self.refreshes >= 1:
                raise DownloadError("signed URLs were refused again after a refresh (revoked or clock skew?)")
            if self.expires_in and self.expires_in < MIN_REFRESH_EXPIRY_S:
                self.expires_in = None  # links that short expired once already: take the server's default
            self.files = self._fetch()
            self.refreshes += 1
            self.generation += 1


def _safe_path(out: Path, name: str) -> Path:
    path = (out / name).resolve()
    if out.resolve() not in path.parents:
        raise DownloadError(f"refusing to write {name!r} outside {out}")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch_file(http, manifest: Manifest, entry: dict, out: Path, advance) -> str:
    """Download one file into place, resuming a .part file; returns "ok", "resumed" or "present"."""
    import httpx

    dest = _safe_path(out, entry["name"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.stat().st_size == entry["size"] and sha256_of(dest) == entry["sha256"]:
        advance(entry["size"])
        return "present"
    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    if resumed:
        advance(min(part.stat().st_size, entry["size"]))
    for attempt in range(4):
        offset = part.stat().st_size if part.exists() else 0
        if offset < entry["size"]:
            url, generation = manifest.url(entry["name"])
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                # Plain client: the signed URL carries its own credentials, never our API key.
                with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0)) as r:
                    if r.status_code == 403:  # expired (or revoked) URL: fresh links once, then go on
                        manifest.refresh(generation)
                        continue
                    if r.status_code == 416:  # nothing left to send: the .part is complete (or too long)
                        pass
                    elif r.status_code == 200 and offset:  # the server ignored Range: start over
                        advance(-offset)
                        offset = 0
                        part.unlink(missing_ok=True)
                    elif r.status_code not in (200, 206):
                        raise DownloadError(f"{entry['name']}: HTTP {r.status_code}")
                    if r.status_code in (200, 206):
                        with open(part, "ab") as f:
                            for block in r.iter_bytes(CHUNK):
                                f.write(block)
                                advance(len(block))
            except httpx.TransportError:
                if attempt == 3:
                    raise
                time.sleep(1 + attempt)
                continue
        if sha256_of(part) == entry["sha256"]:
            os.replace(part, dest)
            return "resumed" if resumed else "ok"
        advance(-part.stat().st_size)  # corrupt or stale partial file: start this one again
        part.unlink()
    raise DownloadError(f"{entry['name']}: sha256 does not match after retries")


def download(
    dataset_id: Annotated[str, typer.Argument(help="Dataset id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the dataset into.")],
    parallel: Annotated[int, typer.Option(min=1, max=32, help="Files downloaded at once.")] = 4,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the dataset is ready.")] = False,
    expires_in: Annotated[Optional[int], typer.Option(help="Lifetime of the signed URLs, seconds.")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> None:
    """Download a ready dataset: every file verified against its sha256; re-run to resume."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    out.mkdir(parents=True, exist_ok=True)
    with _client(api_url, api_key) as http:
        if wait:
            _wait_ready(http, dataset_id)
        try:
            manifest = Manifest(http, dataset_id, expires_in)
        except DownloadError as exc:
            err_console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(1) from None
        entries = sorted(manifest.files.values(), key=lambda e: e["name"])
        total = sum(e["size"] for e in entries)
        results: dict[str, str] = {}
        failures: dict[str, str] = {}
        lock = threading.Lock()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"{dataset_id[:8]} ({len(entries)} files)", total=total)

            def advance(n: int) -> None:
                with lock:
                    progress.advance(task, n)

            with ThreadPoolExecutor(max_workers=parallel) as pool:
                futures = {pool.submit(fetch_file, http, manifest, e, out, advance): e["name"] for e in entries}
                for fut in as_completed(futures):
                    name = futures[fut]
                    try:
                        results[name] = fut.result()
                    except Exception as exc:  # noqa: BLE001 — report every file, then exit non-zero
                        failures[name] = str(exc)
    if failures:
        for name, why in sorted(failures.items()):
            err_console.print(f"[red]failed[/] {escape(name)}: {escape(why)}")
        raise typer.Exit(1)
    (out / "download.json").write_text(json.dumps(
        {"dataset_id": dataset_id, "files": {e["name"]: {"sha256": e["sha256"], "size": e["size"]} for e in entries}},
        indent=1,
    ))
    counts = {k: list(results.values()).count(k) for k in ("ok", "resumed", "present")}
    console.print(f"[green]verified[/] {len(entries)} files ({total:,} bytes) in {escape(str(out))}: {counts['ok']} downloaded, "
                  f"{counts['resumed']} resumed, {counts['present']} already present"
                  + (f"; signed URLs refreshed {manifest.refreshes}x" if manifest.refreshes else ""))


def _wait_ready(http, dataset_id: str, poll_s: float = 2.0) -> None:
    import httpx
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("waiting", total=None)
        unreachable_since = None
        while True:
            try:
                r = http.get(f"/v1/datasets/{dataset_id}")
            except httpx.TransportError as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > MAX_UNREACHABLE_S:
                    err_console.print(f"[red]the API has not answered for {MAX_UNREACHABLE_S:.0f} s:[/] "
                                      f"{escape(type(exc).__name__)}")
                    raise typer.Exit(1) from None
                progress.update(task, description="API unreachable, retrying")
                time.sleep(poll_s)
                continue
            unreachable_since = None
            if r.status_code >= 400:
                err_console.print(f"[red]{escape(_api_error(r))}[/]")
                raise typer.Exit(1)
            ds = r.json()
            prog = ds.get("progress") or {}
            note = f" ({ds['progress_note']})" if ds.get("progress_note") else ""
            progress.update(task, description=escape(f"{ds['status']}{note}"), completed=prog.get("done"),
                            total=prog.get("total"))
            if ds["status"] == "ready":
                return
            if ds["status"] in ("failed", "rejected", "cancelled", "revoked"):
                err_console.print(f"[red]dataset is {ds['status']}[/]" + (f": {escape(ds['error'])}" if ds.get("error") else ""))
                raise typer.Exit(1)
            time.sleep(poll_s)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.command("request")(request)
    app.command("download")(download)
