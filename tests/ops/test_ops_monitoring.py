"""Monitoring in the compose deployment: Prometheus scrapes the API (with the scrape token) and every
worker, Grafana provisions one dashboard, and every PromQL expression of that dashboard names metric
samples the API and the workers really expose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "xraysynth.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _exposed_sample_names(api) -> set[str]:
    """Sample names of one scrape of the API plus the worker's registry, as Prometheus would store them."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import workers.metrics  # noqa: F401 — registers the worker's families in this process

    api.get("/v1/datasets")  # one request, so the API's per-route series exist
    names = set()
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        names |= {sample.name for sample in family.samples}
    return names


def test_compose_runs_prometheus_and_grafana_on_this_host_only(compose):
    services = compose["services"]
    for name, port in (("prometheus", "9090"), ("grafana", "3000")):
        assert name in services and "healthcheck" in services[name], name
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"]
    prom = services["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "${XRAYSYNTH_METRICS_TOKEN:?" in (ROOT / "docker-compose.yml").read_text()
    assert any("deploy/grafana/dashboards" in v for v in services["grafana"]["volumes"])
    assert "ports" not in services["worker"]  # worker metrics stay inside the compose network


def test_prometheus_scrapes_the_api_with_the_token_and_every_worker():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api"]["authorization"]["credentials_file"].endswith("metrics_token")
    assert jobs["api"]["dns_sd_configs"][0]["names"] == ["api"] and jobs["api"]["dns_sd_configs"][0]["port"] == 8000
    from service.settings import Settings

    port = Settings.model_fields["worker_metrics_port"].default
    assert jobs["worker"]["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": port}


def test_the_provisioned_dashboard_loads_and_its_queries_name_metrics_that_exist(api):
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/xraysynth.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert dashboard["uid"] and len(panels) >= 8
    exposed = _exposed_sample_names(api)
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bxraysynth_[a-z_]+\b", target["expr"]))
            assert names, (panel["title"], target["expr"])
            missing = names - exposed
            assert not missing, f"panel {panel['title']!r} queries {sorted(missing)}, which nothing exposes"
            used |= names
    # What the operator asked to see: throughput, stage times, queue depth, errors, privacy flags.
    for wanted in ("xraysynth_worker_images_generated_total", "xraysynth_worker_stage_seconds_bucket",
                   "xraysynth_queue_depth", "xraysynth_http_requests_total", "xraysynth_worker_errors_total",
                   "xraysynth_worker_images_flagged_total", "xraysynth_datasets"):
        assert wanted in used, wanted
