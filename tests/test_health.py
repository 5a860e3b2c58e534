import time

from service import heartbeat


def test_health_reports_every_part_ok(api):
    r = api.get("/v1/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("db", "broker", "storage")} == {"db": "ok", "broker": "ok", "storage": "ok"}


def test_health_names_the_missing_worker_but_the_api_stays_up(api, infra):
    # No worker in this test session's broker: the API answers (requests wait in the queue) and says so.
    r = api.get("/v1/health")
    assert r.status_code == 200
    assert r.json()["status"] == "degraded"
    assert r.json()["worker"] == "unavailable (no worker has reported)"

    heartbeat.beat("some-host:4242")
    try:
        assert api.get("/v1/health").json() == {"status": "ok", "db": "ok", "broker": "ok", "storage": "ok",
                                                "worker": "ok"}
    finally:
        heartbeat.forget("some-host:4242")
    heartbeat.beat("some-host:4243", now=time.time() - 100)  # missed its reports: gone
    heartbeat.set_note("restarting it in 2 s", ttl_s=30)
    worker = api.get("/v1/health").json()["worker"]
    assert worker == "unavailable (no worker has reported for 100 s; restarting it in 2 s)", worker


def test_health_names_the_failing_part(api, infra):
    infra.s3.stop()
    try:
        r = api.get("/v1/health")
        assert r.status_code == 503
        body = r.json()
        assert body["storage"].startswith("unavailable")
        assert body["db"] == "ok" and body["broker"] == "ok"
    finally:
        infra.s3.restart()
    assert api.get("/v1/health").status_code == 200
