"""Schemathesis against the served OpenAPI document, as each kind of caller: a researcher, an admin and
nobody (no key). The real app runs under uvicorn on the suite's PostgreSQL, Redis and S3; every check
is on, so a server error, an undocumented status or content type, a schema-violating request that is
accepted, or an Allow header that disagrees with the routes fails the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import make_dataset, make_model_version
from tests.serving import served_api

ROOT = Path(__file__).resolve().parents[2]
# Cases per operation, enough that every role sends over MIN_REQUESTS (without a key most answers
# are an immediate 401, so schemathesis finds fewer distinct cases per example and needs more).
MAX_EXAMPLES = {"researcher": 12, "admin": 12, "anonymous": 18}
MIN_REQUESTS = 1000
SEED = 20261201


@pytest.fixture
def served(clean, make_user, db, tmp_path):
    """The app under uvicorn on a free loopback port, with a published model, a dataset per user and
    a rate limit the fuzzer cannot reach (429 is documented, but it would hide every other answer)."""
    mv = make_model_version(db, name="cxr-dcgan", version="1.0", conditions=("No Finding", "Mass", "Nodule"))
    users = {"researcher": make_user("researcher", "fuzz-researcher", image_quota=10**6),
             "admin": make_user("admin", "fuzz-admin")}
    make_dataset(db, account_id=users["researcher"].id, model_version_id=mv.id)
    db.commit()
    env = {**os.environ, **clean.env, "XRAYSYNTH_RATE_LIMIT": "1000000/minute", "PYTHONUNBUFFERED": "1"}
    with served_api(env, tmp_path / "api.log") as base:
        yield base, users, tmp_path


def _schemathesis(base: str, headers: dict[str, str], report: Path, examples: int) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("schemathesis")
    args = [str(cli), "--config-file", str(ROOT / "tests" / "fuzz" / "schemathesis.toml"), "--no-color",
            "run", f"{base}/openapi.json", "--checks", "all", "--max-examples", str(examples),
            # One worker: hypothesis parses lambdas with ast.parse while it generates, and CPython 3.11's
            # AST builder can fail spuriously when threads do that at once ("AST constructor recursion
            # depth mismatch", python/cpython#106905), a crash of the fuzzer that is no finding.
            "--seed", str(SEED), "--workers", "1",
            "--report", "ndjson", "--report-ndjson-path", str(report), "--request-timeout", "20",
            "--generation-database", "none",
            # Generation speed on a busy box is not a finding about the API.
            "--suppress-health-check", "too_slow"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=600, cwd=report.parent)


def _read_report(report: Path) -> tuple[int, dict[str, set[str]]]:
    """Requests sent, and each failing check's distinct findings ("ST103 GET /v1/x: Received: 404")."""
    sent, findings = 0, {}
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        sent += len(finished["recorder"].get("interactions", {}))
        for checks in finished["recorder"].get("checks", {}).values():
            for check in checks:
                failure = (check.get("failure_info") or {}).get("failure")
                if check.get("status") == "failure" and failure:
                    first = failure.get("message", "").splitlines()[0] if failure.get("message") else ""
                    findings.setdefault(check["name"], set()).add(
                        f"{failure.get('code')} {failure.get('operation')}: {first}")
    return sent, findings


@pytest.mark.parametrize("role", ["researcher", "admin", "anonymous"])
def test_fuzzing_finds_nothing_for_each_kind_of_caller(served, role):
    base, users, tmp = served
    headers = {} if role == "anonymous" else users[role].headers
    report = tmp / f"{role}.ndjson"
    started = time.monotonic()
    examples = int(os.environ.get("XRAYSYNTH_FUZZ_EXAMPLES", MAX_EXAMPLES[role]))
    result = _schemathesis(base, headers, report, examples)
    took = time.monotonic() - started
    assert report.exists(), result.stdout[-6000:] + result.stderr[-3000:]
    sent, findings = _read_report(report)
    print(f"fuzz {role}: {sent} requests in {took:.1f}s (schemathesis exit {result.returncode})")
    for check, found in sorted(findings.items()):
        print(f"  {check}: {len(found)}", *sorted(found), sep="\n    ")
    api_log = (tmp / "api.log").read_text(errors="replace")
    assert result.returncode == 0, result.stdout[-12000:] + "\n--- api log ---\n" + api_log[-3000:]
    assert sent >= MIN_REQUESTS, f"only {sent} requests generated for {role}"
