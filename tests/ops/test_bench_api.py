"""`xraysynth bench api` runs end to end and reports every phase (its figures are for people, not asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PHASES = {"bare", "status", "spread", "list", "create", "create1"}


def test_the_api_benchmark_reports_every_phase_without_errors(tmp_path, infra):
    # Two API processes, as the API image runs them: their CPU is counted through uvicorn's supervisor.
    out = tmp_path / "bench.json"
    xraysynth = Path(sys.executable).parent / "xraysynth"
    run = subprocess.run([str(xraysynth), "bench", "api", "--clients", "4", "--seconds", "1",
                          "--create-seconds", "1", "--api-workers", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    phases = json.loads(out.read_text())["phases"]
    assert {p["name"] for p in phases} == PHASES
    for p in phases:
        assert p["requests"] > 0 and p["errors"] == 0, p
        assert p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert p["server_cpu_ms_per_request"] > 0, p
    reads = [p for p in phases if p["name"] in ("status", "spread", "list")]
    assert all(0 < p["ratio_to_bare"] for p in reads)
    assert all(p["health"]["not_ok"] == 0 for p in reads)
    assert "status ÷ bare at 4 clients" in run.stdout
