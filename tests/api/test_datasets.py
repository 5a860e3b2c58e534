"""POST/GET /v1/datasets, cancel: requests, validation that writes nothing, ownership."""

from __future__ import annotations

import pytest

from tests.api.conftest import PURPOSE, random_id
from tests.factories import make_model_version, queued_tasks


def test_request_is_stored_pending_review_with_defaults(api, researcher, model, request_dataset, db):
    body = request_dataset(researcher, conditions={"Mass": 10, "No Finding": 5})
    assert body["status"] == "pending_review"
    assert body["conditions"] == {"No Finding": 5, "Mass": 10}  # the model's condition order
    assert list(body["conditions"]) == ["No Finding", "Mass"]
    # Read back from JSONB (which keeps keys by length: Mass first), still in the model's order.
    assert list(api.get(f"/v1/datasets/{body['id']}", headers=researcher.headers).json()["conditions"]) == ["No Finding", "Mass"]
    [listed] = api.get("/v1/datasets", headers=researcher.headers).json()["datasets"]
    assert list(listed["conditions"]) == ["No Finding", "Mass"]
    assert list(api.get(f"/v1/datasets/{body['id']}/card", headers=researcher.headers).json()["request"]["conditions"]) == ["No Finding", "Mass"]
    assert body["total_images"] == 15 and body["progress"] == {"done": 0, "total": 15}
    assert body["model"] == {"id": str(model.id), "name": "cxr-dcgan", "version": "1.0"}
    assert body["format"] == "png" and body["heatmaps"] is True
    assert 0 <= body["seed"] < 2**63
    assert body["owner"]["name"] == researcher.name and body["purpose"] == PURPOSE
    assert body["error"] is None and body["links"]["download"].endswith("/download")

    from service.audit.models import AuditEvent

    [event] = db.query(AuditEvent).filter_by(action="dataset.request").all()
    assert event.target_id == body["id"] and event.actor_id == researcher.id
    assert event.details["total_images"] == 15
    assert queued_tasks(_broker(api)) == []  # pending review: nothing enqueued


def _broker(api) -> str:
    from service.settings import get_settings

    return get_settings().broker_url


def test_request_with_every_option(api, researcher, model, request_dataset):
    body = request_dataset(researcher, model="cxr-dcgan:1.0", format="dicom", heatmaps=False, seed=42)
    assert (body["format"], body["heatmaps"], body["seed"]) == ("dicom", False, 42)
    by_id = request_dataset(researcher, model=str(model.id))
    assert by_id["model"]["id"] == str(model.id)


def test_default_model_is_newest_published_offering_all_conditions(api, researcher, model, db, request_dataset):
    from datetime import timedelta

    from service.timeutil import utcnow

    newer_mass_only = make_model_version(db, name="cxr-dcgan", version="2.0", conditions=["Mass"],
                                         published_at=utcnow() + timedelta(hours=1))
    make_model_version(db, name="cxr-dcgan", version="3.0-draft", conditions=["Mass", "No Finding"], status="draft")
    db.commit()
    assert request_dataset(researcher, conditions={"Mass": 1})["model"]["version"] == "2.0"
    assert request_dataset(researcher, conditions={"Mass": 1, "No Finding": 1})["model"]["version"] == "1.0"
    assert newer_mass_only.id


def _refusals():
    base = {"conditions": {"Mass": 10}, "purpose": PURPOSE}
    return [
        # (id, body patch, status, code, field)
        ("unknown_condition", {"conditions": {"Unicorn lung": 5}}, 422, "unknown_condition", "conditions.Unicorn lung"),
        ("unavailable_by_policy", {"conditions": {"Hernia": 5}}, 422, "condition_unavailable", "conditions.Hernia"),
        ("count_zero", {"conditions": {"Mass": 0}}, 422, "validation_error", "conditions.Mass"),
        ("count_negative", {"conditions": {"Mass": -3}}, 422, "validation_error", "conditions.Mass"),
        ("count_float", {"conditions": {"Mass": 2.5}}, 422, "validation_error", "conditions.Mass"),
        ("count_string", {"conditions": {"Mass": "10"}}, 422, "validation_error", "conditions.Mass"),
        ("no_conditions", {"conditions": {}}, 422, "validation_error", "conditions"),
        ("conditions_not_object", {"conditions": ["Mass"]}, 422, "validation_error", "conditions"),
        ("over_request_max", {"conditions": {"Mass": 600, "Nodule": 500}}, 422, "too_many_images", "conditions"),
        ("over_quota", {"conditions": {"Mass": 900}}, 422, "quota_exceeded", "conditions"),
        ("unknown_model", {"model": "nope:9"}, 422, "unknown_model", "model"),
        ("unknown_model_id", {"model": random_id()}, 422, "unknown_model", "model"),
        ("draft_model", {"model": "cxr-dcgan:draft"}, 422, "unknown_model", "model"),
        ("retired_model", {"model": "cxr-dcgan:0.9"}, 422, "model_retired", "model"),
        ("not_offered_by_model", {"model": "other:1", "conditions": {"Nodule": 3}}, 422, "condition_not_offered", "conditions.Nodule"),
        ("bad_format", {"format": "jpeg"}, 422, "validation_error", "format"),
        ("heatmaps_not_bool", {"heatmaps": "yes"}, 422, "validation_error", "heatmaps"),
        ("negative_seed", {"seed": -1}, 422, "validation_error", "seed"),
        ("huge_seed", {"seed": 2**63}, 422, "validation_error", "seed"),
        ("purpose_missing", {"purpose": None}, 422, "validation_error", "purpose"),
        ("purpose_short", {"purpose": "for science"}, 422, "validation_error", "purpose"),
        ("purpose_long", {"purpose": "x" * 2001}, 422, "validation_error", "purpose"),
        ("unknown_field", {"priority": "high"}, 422, "validation_error", "priority"),
    ], base


@pytest.mark.parametrize("case", _refusals()[0], ids=lambda c: c[0])
def test_bad_request_is_refused_and_writes_nothing(api, make_user, model, db, counts, settings_env, case):
    name, patch, status, code, field = case
    settings_env(max_images_per_request=1000)
    make_model_version(db, name="cxr-dcgan", version="draft", conditions=["Mass"], status="draft")
    make_model_version(db, name="cxr-dcgan", version="0.9", conditions=["Mass"], status="retired")
    make_model_version(db, name="other", version="1", conditions=["Mass"])
    db.commit()
    user = make_user("researcher", image_quota=800)
    body = {**_refusals()[1], **patch}
    if body.get("purpose") is None:
        body.pop("purpose")
    before = counts()
    r = api.post("/v1/datasets", json=body, headers=user.headers)
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"], "field": field}}
    assert "Traceback" not in r.text
    assert counts() == before


def test_unavailable_condition_message_names_the_numbers(api, researcher, model, request_dataset):
    err = request_dataset(researcher, expect=422, conditions={"Hernia": 1})["error"]
    assert "7 patients" in err["message"] and "20" in err["message"]


def test_quota_counts_everything_but_rejected_and_cancelled(api, make_user, model, request_dataset):
    user = make_user("researcher", image_quota=30)
    first = request_dataset(user, conditions={"Mass": 20})
    request_dataset(user, expect=422, conditions={"Mass": 11})
    assert api.post(f"/v1/datasets/{first['id']}/cancel", headers=user.headers).status_code == 200
    request_dataset(user, conditions={"Mass": 30})  # quota given back by the cancellation


def test_auto_approval_for_small_requests(api, researcher, model, request_dataset, settings_env, infra, db):
    settings_env(auto_approve_max_images=10)
    small = request_dataset(researcher, conditions={"Mass": 10})
    assert small["status"] == "approved"
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"]) == [("xraysynth.plan_dataset", [small["id"]])]
    big = request_dataset(researcher, conditions={"Mass": 11})
    assert big["status"] == "pending_review"

    from service.audit.models import AuditEvent

    [approval] = db.query(AuditEvent).filter_by(action="dataset.approve").all()
    assert approval.actor_name == "system" and approval.details["policy"] == "auto_approve"


def test_admins_cannot_request_datasets(api, admin, model, request_dataset):
    assert request_dataset(admin, expect=403)["error"]["code"] == "forbidden"


def test_list_and_get_show_only_your_own(api, researcher, researcher_b, admin, model, request_dataset):
    mine = request_dataset(researcher)
    theirs = request_dataset(researcher_b)
    assert [d["id"] for d in api.get("/v1/datasets", headers=researcher.headers).json()["datasets"]] == [mine["id"]]
    assert [d["id"] for d in api.get("/v1/datasets", headers=researcher_b.headers).json()["datasets"]] == [theirs["id"]]
    all_ids = {d["id"] for d in api.get("/v1/datasets", headers=admin.headers).json()["datasets"]}
    assert all_ids == {mine["id"], theirs["id"]}

    r = api.get(f"/v1/datasets/{mine['id']}", headers=researcher.headers)
    assert r.status_code == 200 and r.json()["id"] == mine["id"]
    assert api.get(f"/v1/datasets/{mine['id']}", headers=admin.headers).status_code == 200


def test_admin_filters_by_status(api, researcher, admin, model, request_dataset):
    a = request_dataset(researcher)
    b = request_dataset(researcher)
    api.post(f"/v1/datasets/{b['id']}/cancel", headers=researcher.headers)
    r = api.get("/v1/datasets?status=cancelled", headers=admin.headers)
    assert [d["id"] for d in r.json()["datasets"]] == [b["id"]]
    r = api.get("/v1/datasets?status=pending_review", headers=admin.headers)
    assert [d["id"] for d in r.json()["datasets"]] == [a["id"]]
    r = api.get("/v1/datasets?status=nonsense", headers=admin.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "status"


@pytest.mark.parametrize(
    "method,suffix",
    [("get", ""), ("get", "/download"), ("get", "/card"), ("post", "/cancel")],
)
def test_someone_elses_dataset_is_404_like_an_unknown_id(api, researcher, researcher_b, model, request_dataset, counts, method, suffix):
    mine = request_dataset(researcher)
    before = counts()
    theirs = getattr(api, method)(f"/v1/datasets/{mine['id']}{suffix}", headers=researcher_b.headers)
    unknown = getattr(api, method)(f"/v1/datasets/{random_id()}{suffix}", headers=researcher_b.headers)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json() == {"error": {"code": "not_found", "message": "dataset not found"}}
    assert counts() == before


def test_cancel_then_cancel_again_is_409(api, researcher, model, request_dataset, counts, db):
    ds = request_dataset(researcher)
    r = api.post(f"/v1/datasets/{ds['id']}/cancel", json={"reason": "wrong condition"}, headers=researcher.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    before = counts()
    r = api.post(f"/v1/datasets/{ds['id']}/cancel", headers=researcher.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert counts() == before

    from service.audit.models import AuditEvent

    [event] = db.query(AuditEvent).filter_by(action="dataset.cancel").all()
    assert event.details == {"from": "pending_review", "to": "cancelled", "reason": "wrong condition"}


def test_admin_cannot_cancel_for_the_researcher(api, researcher, admin, model, request_dataset):
    ds = request_dataset(researcher)
    assert api.post(f"/v1/datasets/{ds['id']}/cancel", headers=admin.headers).status_code == 403
