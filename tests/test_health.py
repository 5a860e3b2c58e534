def test_health_reports_every_part_ok(api):
    r = api.get("/v1/health")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "db": "ok", "broker": "ok", "storage": "ok"}


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
