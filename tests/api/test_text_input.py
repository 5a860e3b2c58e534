"""Text a client sends is checked before it reaches the database: a NUL byte or another control
character is a 422 naming the field (PostgreSQL would refuse it with a 500), and nothing is written.
Query filters that are declared date-times take ISO 8601 only, not numbers."""

from __future__ import annotations

import pytest

from tests.api.conftest import PURPOSE


def _refused(r, field: str) -> None:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error" and err["field"] == field, err
    assert "control character" in err["message"] or "ISO 8601" in err["message"], err


def test_a_purpose_with_a_nul_byte_is_422_naming_the_field_and_writes_nothing(api, researcher, model, counts):
    before = counts()
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 5}, "purpose": PURPOSE[:30] + "\u0000" + PURPOSE[30:]},
                 headers=researcher.headers)
    _refused(r, "purpose")
    assert counts() == before


@pytest.mark.parametrize("body, field", [
    ({"conditions": {"Ma\u0000ss": 5}}, "conditions"),
    ({"conditions": {"Mass\u001b[31m": 5}}, "conditions"),
    ({"model": "cxr-dcgan:1.0\u0000"}, "model"),
    ({"model": "cxr-dcgan\n:1.0"}, "model"),
    ({"purpose": PURPOSE + "\u0007 bell"}, "purpose"),
    ({"purpose": PURPOSE + "\u0085"  + " next line (C1)"}, "purpose"),
])
def test_control_characters_anywhere_in_a_request_are_refused_before_the_database(
        api, researcher, model, counts, body, field):
    before = counts()
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 5}, "purpose": PURPOSE, **body}, headers=researcher.headers)
    _refused(r, field)
    assert counts() == before


def test_prose_keeps_its_tabs_and_line_breaks(api, researcher, model):
    purpose = "Pre-training a detector.\n\tThen fine-tuning on our own scans.\r\nThird line."
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 5}, "purpose": purpose}, headers=researcher.headers)
    assert r.status_code == 202, r.text
    assert r.json()["purpose"] == purpose


def test_reasons_and_notes_with_nul_are_refused_on_every_admin_action(
        api, researcher, admin, dataset_at, model, counts):
    pending = dataset_at(researcher, "pending_review")
    before = counts()
    nul = "looks fine \u0000 until here"
    _refused(api.post(f"/v1/datasets/{pending}/reviews", json={"decision": "reject", "reason": nul},
                      headers=admin.headers), "reason")
    _refused(api.post(f"/v1/datasets/{pending}/cancel", json={"reason": nul}, headers=researcher.headers), "reason")
    _refused(api.post(f"/v1/datasets/{pending}/revoke", json={"reason": nul}, headers=admin.headers), "reason")
    _refused(api.post(f"/v1/datasets/{pending}/retry", json={"note": nul}, headers=admin.headers), "note")
    _refused(api.post(f"/v1/models/{model.id}/retire", json={"note": nul}, headers=admin.headers), "note")
    assert counts() == before


@pytest.mark.parametrize("param", ["action", "target_id", "actor"])
def test_audit_filters_with_a_nul_byte_are_422(api, admin, param):
    r = api.get(f"/v1/audit?{param}=a%00b", headers=admin.headers)
    _refused(r, param)
    assert api.get(f"/v1/audit?{param}=ab", headers=admin.headers).status_code == 200


@pytest.mark.parametrize("value", ["0.5", "1700000000", "-3", "1e9"])
def test_a_number_is_not_a_date_time_in_the_audit_filters(api, admin, value):
    _refused(api.get(f"/v1/audit?until={value}", headers=admin.headers), "until")
    _refused(api.get(f"/v1/audit?since={value}", headers=admin.headers), "since")


def test_iso_date_times_still_filter_the_audit_log(api, admin):
    r = api.get("/v1/audit?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00", headers=admin.headers)
    assert r.status_code == 200 and r.json()["events"]
    assert api.get("/v1/audit?until=2000-01-01T00:00:00Z", headers=admin.headers).json()["events"] == []


def test_an_audit_cursor_beyond_bigint_is_422_not_a_database_error(api, admin):
    r = api.get(f"/v1/audit?before_id={2**63}", headers=admin.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "before_id"


def test_the_refused_characters_are_declared_in_the_openapi_document(api):
    doc = api.get("/openapi.json").json()
    purpose = doc["components"]["schemas"]["DatasetCreate"]["properties"]["purpose"]
    assert "\\u0000" in purpose["pattern"]
    action = next(p for p in doc["paths"]["/v1/audit"]["get"]["parameters"] if p["name"] == "action")
    assert "\\u0000" in str(action["schema"])
    until = next(p for p in doc["paths"]["/v1/audit"]["get"]["parameters"] if p["name"] == "until")
    assert "date-time" in str(until["schema"])
