"""A real worker process, after one release: its own /metrics port shows images generated, images the
memorisation filter flagged, time in each stage of each shard and finished shards; its log lines are
JSON with the dataset and shard; neither carries the purpose text, a key or pixels."""

from __future__ import annotations

import json
import re

import httpx

from tests.workers.conftest import (
    PLANT_SEED,
    PLANT_SPEC,
    PLANTED,
    SHARD_SIZE,
    approve,
    request_dataset,
    wait_status,
)

STAGES = ("generate", "heatmaps", "filter", "encode", "upload", "record")


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def test_a_worker_reports_images_flags_stage_times_and_shards_on_its_own_port(
        model_version, researcher, admin, api, start_worker):
    from service.embedded import free_port

    port = free_port()
    dataset_id = request_dataset(api, researcher, PLANT_SPEC, PLANT_SEED)
    approve(api, admin, dataset_id)
    worker = start_worker(XRAYSYNTH_WORKER_METRICS_PORT=str(port))
    wait_status(api, researcher, dataset_id, "ready", timeout=180, workers=[worker])

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = sum(PLANT_SPEC.values())
    shards = -(-total // SHARD_SIZE)
    assert _value(text, "xraysynth_worker_images_generated_total") == total
    # The planted images are copies of training images: the filter dropped each at least once.
    assert _value(text, "xraysynth_worker_images_flagged_total", check="copy") >= len(PLANTED)
    assert _value(text, "xraysynth_worker_shards_total", outcome="done") == shards
    for stage in STAGES:
        assert _value(text, "xraysynth_worker_stage_seconds_count", stage=stage) == shards, stage
        assert _value(text, "xraysynth_worker_stage_seconds_sum", stage=stage) > 0, stage
    assert _value(text, "xraysynth_worker_errors_total", store="s3") == 0
    assert "worker pipeline tests" not in text and dataset_id not in text  # no purpose, no ids as labels
    assert researcher.key not in text and admin.key not in text

    lines = []
    for raw in worker.log.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    mine = [line for line in lines if line.get("dataset_id") == dataset_id]
    assert mine, "no worker log line carried the dataset id"
    assert {"time", "level", "logger", "message"} <= set(mine[0])
    assert {line["shard"] for line in mine if "shard" in line} == {str(i) for i in range(shards)}
    log_text = worker.log.read_text(errors="replace")
    assert "worker pipeline tests" not in log_text
    assert researcher.key not in log_text and admin.key not in log_text
