"""What an operator sees: a request id on every answer, JSON log lines that carry it with the account,
/metrics by route template, and nothing secret (keys, pepper, S3 secret, purpose text, pixels) in
either. Driven through the real app on the suite's PostgreSQL, Redis and S3."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid

import pytest

from tests.api.conftest import PURPOSE
from tests.factories import put_private_object

METRICS_TOKEN = "scrape-" + uuid.uuid4().hex


@pytest.fixture
def log_lines(api):
    """What the app's log handler writes, as the process would write it to stderr."""
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "xraysynth")
    buffer = io.StringIO()
    old = handler.setStream(buffer)
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)  # the strictest case: every line our code could write
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    logging.getLogger().setLevel(root_level)
    handler.setStream(old)


@pytest.fixture
def scrape(api, settings_env):
    settings_env(metrics_token=METRICS_TOKEN)

    def read() -> str:
        r = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return r.text

    return read


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_every_answer_carries_a_request_id_and_a_clients_own_id_is_kept(api, researcher):
    answers = [
        api.get("/v1/health"),
        api.get("/v1/datasets"),  # 401
        api.get(f"/v1/datasets/{uuid.uuid4()}", headers=researcher.headers),  # 404
        api.post("/v1/datasets", content=b"x" * 70_000, headers={**researcher.headers, "content-type": "application/json"}),
        api.options("/v1/datasets"),  # 405
    ]
    assert [r.status_code for r in answers][1:] == [401, 404, 413, 405]
    ids = [r.headers.get("x-request-id") for r in answers]
    assert all(ids) and len(set(ids)) == len(ids)
    r = api.get("/v1/datasets", headers={**researcher.headers, "X-Request-ID": "trace-42.a"})
    assert r.headers["x-request-id"] == "trace-42.a"
    # Not a plain token (it would land in every log line): replaced by a fresh id.
    r = api.get("/v1/datasets", headers={**researcher.headers, "X-Request-ID": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_a_crash_is_a_500_with_a_request_id_and_a_log_line_without_its_text(api, researcher, monkeypatch, log_lines):
    from service.datasets import reads

    def boom(*a, **k):
        raise RuntimeError("secret detail /hospital/path")

    monkeypatch.setattr(reads, "_fetch_list", boom)
    r = api.get("/v1/datasets", headers=researcher.headers)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    rid = r.headers["x-request-id"]
    lines = [line for line in log_lines() if line.get("request_id") == rid]
    assert any(line["level"] == "ERROR" for line in lines)
    assert any(line.get("status") == 500 and line["logger"] == "xraysynth.access" for line in lines)
    assert "secret detail" not in json.dumps(lines)


def test_log_lines_are_json_with_time_level_logger_request_and_account(api, researcher, model, log_lines):
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 2}, "purpose": PURPOSE},
                 headers={**researcher.headers, "X-Request-ID": "req-create-1"})
    assert r.status_code == 202, r.text
    lines = [line for line in log_lines() if line.get("request_id") == "req-create-1"]
    assert lines, "no log line carried the request id"
    access = [line for line in lines if line["logger"] == "xraysynth.access"]
    assert len(access) == 1
    line = access[0]
    assert {"time", "level", "logger", "message", "request_id", "account_id"} <= set(line)
    assert line["account_id"] == str(researcher.id)
    assert line["route"] == "/v1/datasets" and line["method"] == "POST" and line["status"] == 202
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_log_time_is_the_records_utc_time_to_the_millisecond_across_seconds():
    from datetime import UTC, datetime

    from service.observability.logs import _utc_time

    # The second's text is reused while the second lasts: each stamp must still be its own.
    for created in (1_796_000_000.0, 1_796_000_000.999, 1_796_000_001.0005, 1_796_000_001.5, 1_700_000_000.25):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert _utc_time(created) == expected


def test_no_key_pepper_s3_secret_purpose_or_pixel_reaches_a_log_line_or_a_metric(
        api, admin, researcher, model, infra, log_lines, scrape, dataset_at):
    import numpy as np
    from PIL import Image

    # An evidence image with a recognisable pixel pattern, served to the admin through the API.
    ds_id = dataset_at(researcher, status="pending_review")
    pixels = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 2654435761 % 251).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    put_private_object(f"evidence/{ds_id}/pairs.png", png.getvalue(), content_type="image/png")

    secret_purpose = "Purpose-" + uuid.uuid4().hex + " for a private cohort study"
    made = api.post("/v1/accounts", json={"name": "eve", "role": "researcher"}, headers=admin.headers)
    assert made.status_code == 201, made.text
    new_key = made.json()["api_key"]["key"]
    eve = {"Authorization": f"Bearer {new_key}"}
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 1}, "purpose": secret_purpose}, headers=eve)
    assert r.status_code == 202, r.text
    api.get("/v1/datasets", headers={"Authorization": f"Bearer {new_key}x"})  # a wrong key: 401
    api.get("/v1/datasets", headers=researcher.headers)
    evidence = api.get(f"/v1/datasets/{ds_id}/evidence/pairs.png", headers=admin.headers)
    metrics = scrape()

    logged = "\n".join(json.dumps(line) for line in log_lines())
    assert "xraysynth.access" in logged and "/v1/datasets" in metrics  # both really captured something
    forbidden = {
        "researcher key": researcher.key, "admin key": admin.key, "new key": new_key,
        "pepper": infra.env["XRAYSYNTH_API_KEY_PEPPER"], "S3 secret": infra.env["XRAYSYNTH_S3_SECRET_ACCESS_KEY"],
        "purpose": secret_purpose, "metrics token": METRICS_TOKEN,
    }
    assert evidence.status_code == 200 and evidence.content == png.getvalue()  # the pixels did pass through
    forbidden["pixel row"] = pixels[10].tobytes().hex()
    forbidden["png bytes"] = png.getvalue()[-64:].hex()
    for name, value in forbidden.items():
        for where, text in (("log", logged), ("metrics", metrics)):
            assert value not in text, f"{name} reached a {where} line"
    assert "xs_" not in logged and "xs_" not in metrics  # no key prefix either
    for line in log_lines():
        assert "\\x89PNG" not in json.dumps(line)


def test_metrics_count_requests_by_route_template_with_datasets_by_status_and_queue_depth(
        api, researcher, dataset_at, scrape, infra):
    from service import queue

    before = scrape()
    route = {"route": "/v1/datasets/{dataset_id}", "method": "GET"}
    for _ in range(3):
        assert api.get(f"/v1/datasets/{uuid.uuid4()}", headers=researcher.headers).status_code == 404
    api.get(f"/v1/not-a-route/{uuid.uuid4()}")
    dataset_at(researcher, status="pending_review")
    dataset_at(researcher, status="ready")
    queue.enqueue_generation(uuid.uuid4())
    queue.enqueue_generation(uuid.uuid4())
    text = scrape()
    # Counters live as long as the process: compare with the scrape before.
    for name, labels in (("xraysynth_http_requests_total", {**route, "status": "404"}),
                         ("xraysynth_http_request_duration_seconds_count", route)):
        assert _sample(text, name, **labels) - (_sample(before, name, **labels) or 0) == 3, name
    assert "not-a-route" not in text  # unmatched paths share one label
    assert _sample(text, "xraysynth_http_requests_total", route="unmatched", status="404") >= 1
    assert _sample(text, "xraysynth_datasets", status="pending_review") == 1
    assert _sample(text, "xraysynth_datasets", status="ready") == 1
    assert _sample(text, "xraysynth_datasets", status="failed") == 0
    assert _sample(text, "xraysynth_queue_depth", queue="generation") == 2


def test_metrics_are_not_public_outside_development(api, settings_env):
    settings_env(environment="test", metrics_token="")
    assert api.get("/metrics").status_code == 404  # no token configured: not exposed at all
    settings_env(metrics_token=METRICS_TOKEN)
    r = api.get("/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    assert "/metrics" not in api.get("/openapi.json").json()["paths"]


def test_a_key_or_secret_written_into_a_message_by_mistake_is_masked(infra):
    from service.observability.logs import ConsoleFormatter, JsonFormatter, _Redactor, _secrets_of_settings

    key = "xs_" + "A1b2C3d4" * 5
    pepper, s3_secret = infra.env["XRAYSYNTH_API_KEY_PEPPER"], infra.env["XRAYSYNTH_S3_SECRET_ACCESS_KEY"]
    redact = _Redactor(_secrets_of_settings())
    record = logging.makeLogRecord({"name": "xraysynth.test", "levelname": "WARNING", "levelno": 30,
                                    "msg": "got %s with Authorization: Bearer %s, pepper %s, secret %s",
                                    "args": (key, "tok-123456789", pepper, s3_secret)})
    for formatter in (JsonFormatter(redact), ConsoleFormatter(redact)):
        line = formatter.format(record)
        for secret in (key, "tok-123456789", pepper, s3_secret):
            assert secret not in line
        assert "[redacted]" in line
