"""docker-compose.yml and the Dockerfile: the services a deployment needs, secrets that must be given,
and an API image without torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "XRAYSYNTH_S3_ACCESS_KEY_ID", "XRAYSYNTH_S3_SECRET_ACCESS_KEY",
                    "XRAYSYNTH_API_KEY_PEPPER", "FLOWER_BASIC_AUTH", "XRAYSYNTH_METRICS_TOKEN", "GRAFANA_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_service(compose):
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "minio", "createbuckets", "flower", "migrate"} <= set(services)
    assert services["createbuckets"]["image"].startswith("minio/mc")
    for name in ("api", "worker", "postgres", "redis", "minio", "flower"):
        assert "healthcheck" in services[name], name
    assert services["api"]["build"]["target"] == "api" and services["worker"]["build"]["target"] == "worker"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["createbuckets"]["condition"] == "service_completed_successfully"


def test_compose_secrets_are_required_not_defaulted(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    for var in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + var + r"(:[?-])?", text)
        assert uses and all(u == ":?" for u in uses), f"{var} must be required (${{{var}:?…}}) everywhere"
    env = compose["services"]["api"]["environment"]
    assert env["XRAYSYNTH_ENVIRONMENT"] == "production"  # so the service also refuses dev defaults
    assert compose["services"]["worker"]["environment"] == env


def test_dockerfile_api_stage_installs_no_torch():
    stages: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\w+)", line.strip(), re.I)
        if m:
            current = m.group(1).lower()
            stages[current] = []
        elif current:
            stages[current].append(line)
    assert {"base", "api", "worker"} <= set(stages)
    api = "\n".join(stages["base"] + stages["api"])
    assert "pip install ." in api
    assert "[worker" not in api and "torch" not in api.replace("No torch", "")
    assert "COPY models" not in api  # checkpoints are hospital-zone data
    assert '".[worker]"' in "\n".join(stages["worker"])


def test_base_dependencies_exclude_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not names & {"torch", "opacus", "scipy", "pydicom"}
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["worker"])


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_validates(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    cmd = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"]
    missing = subprocess.run(cmd, env=base, capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode != 0 and any(v in missing.stderr + missing.stdout for v in REQUIRED_SECRETS)
    env = {**base, **{k: "x" * 20 for k in REQUIRED_SECRETS}, "FLOWER_BASIC_AUTH": "ops:secret"}
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_the_package_builds_without_setuptools_deprecations(tmp_path):
    # `make install` printed setuptools' "project.license as a TOML table is deprecated ... by 2027-Feb-18
    # ... your builds will no longer be supported" four times: a new user's first screen, and a build
    # that newer setuptools refuse.
    import sys

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "deprecated" not in out.lower(), out[-2000:]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, as setuptools >= 77 reads it
