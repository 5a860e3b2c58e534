"""Review policy (REVIEWS_REQUIRED distinct admins, one reject ends it, blind votes), the queue, the
hand-off to the broker, and the admin-only evidence."""

from __future__ import annotations

import logging

import pytest

from tests.factories import put_private_object, put_release_object, queued_tasks

APPROVE = {"decision": "approve", "reason": "purpose matches the data-use agreement"}
REJECT = {"decision": "reject", "reason": "too few patients behind this condition for a release this size"}


def vote(api, user, dataset_id, body=APPROVE):
    return api.post(f"/v1/datasets/{dataset_id}/reviews", json=body, headers=user.headers)


def audit_actions(db, target_id) -> list[str]:
    from service.audit.models import AuditEvent

    db.rollback()
    return [e.action for e in db.query(AuditEvent).filter_by(target_id=str(target_id)).order_by(AuditEvent.id)]


def test_one_approval_approves_and_enqueues_generation(api, researcher, admin, model, request_dataset, infra, db):
    ds = request_dataset(researcher)
    r = vote(api, admin, ds["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dataset"]["status"] == "approved" and body["enqueued"] is True
    assert body["review"]["approvals_given"] == 1 and body["review"]["approvals_required"] == 1
    assert api.get(f"/v1/datasets/{ds['id']}", headers=researcher.headers).json()["status"] == "approved"
    # The message is on the broker: kombu keeps the `generation` queue as a Redis list.
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"], "generation") == [("xraysynth.plan_dataset", [ds["id"]])]
    assert audit_actions(db, ds["id"]) == ["dataset.request", "review.cast", "dataset.approve"]


def test_two_person_rule(api, researcher, admin, admin2, model, request_dataset, settings_env, infra, db):
    settings_env(reviews_required=2)
    ds = request_dataset(researcher)
    r = vote(api, admin, ds["id"])
    assert r.status_code == 200 and r.json()["dataset"]["status"] == "pending_review"
    assert r.json()["enqueued"] is None
    # The same admin again never counts twice.
    again = vote(api, admin, ds["id"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_reviewed"
    assert api.get(f"/v1/datasets/{ds['id']}", headers=admin.headers).json()["status"] == "pending_review"
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"]) == []

    r = vote(api, admin2, ds["id"])
    assert r.json()["dataset"]["status"] == "approved"
    assert [v["reviewer"] for v in r.json()["review"]["votes"]] == [admin.name, admin2.name]
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"]) == [("xraysynth.plan_dataset", [ds["id"]])]
    assert audit_actions(db, ds["id"]) == ["dataset.request", "review.cast", "review.cast", "dataset.approve"]

    from service.audit.models import AuditEvent

    approval = db.query(AuditEvent).filter_by(action="dataset.approve").one()
    assert approval.actor_name == admin2.name and approval.details["approvals"] == 2


def test_one_reject_ends_it(api, researcher, admin, admin2, model, request_dataset, settings_env, infra):
    settings_env(reviews_required=2)
    ds = request_dataset(researcher)
    assert vote(api, admin, ds["id"]).status_code == 200
    r = vote(api, admin2, ds["id"], REJECT)
    assert r.status_code == 200 and r.json()["dataset"]["status"] == "rejected"
    seen = api.get(f"/v1/datasets/{ds['id']}", headers=researcher.headers).json()
    assert seen["status"] == "rejected" and REJECT["reason"] in seen["error"]
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"]) == []


def test_reject_with_a_single_vote(api, researcher, admin, model, request_dataset):
    ds = request_dataset(researcher)
    assert vote(api, admin, ds["id"], REJECT).json()["dataset"]["status"] == "rejected"


def test_a_request_whose_model_was_retired_cannot_be_approved_only_rejected(api, researcher, admin, model,
                                                                          request_dataset, infra, counts):
    # Seen in the console: a request pending when its generator was retired was approved and generated
    # from the retired model, and nothing on the review page said it was retired.
    ds = request_dataset(researcher)
    assert api.post(f"/v1/models/{model.id}/retire", headers=admin.headers).status_code == 200
    evidence = api.get(f"/v1/datasets/{ds['id']}/evidence", headers=admin.headers).json()
    assert evidence["model"]["status"] == "retired"
    before = counts()
    r = vote(api, admin, ds["id"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_retired", r.text
    assert "reject it" in r.json()["error"]["message"]
    assert counts() == before  # no vote, no audit event, no transition
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"], "generation") == []
    r = vote(api, admin, ds["id"], REJECT)
    assert r.status_code == 200 and r.json()["dataset"]["status"] == "rejected"


@pytest.mark.parametrize("status", ["approved", "generating", "ready", "rejected", "failed", "cancelled", "revoked"])
def test_reviewing_a_non_pending_dataset_is_409_and_writes_nothing(api, researcher, admin, dataset_at, counts, status):
    ds_id = dataset_at(researcher, status)
    before = counts()
    r = vote(api, admin, ds_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_pending"
    assert counts() == before


@pytest.mark.parametrize(
    "body,field",
    [
        ({"decision": "approve"}, "reason"),
        ({"decision": "approve", "reason": "   "}, "reason"),
        ({"decision": "maybe", "reason": "x"}, "decision"),
        ({"decision": "approve", "reason": "ok", "weight": 2}, "weight"),
    ],
)
def test_bad_vote_is_422_and_writes_nothing(api, researcher, admin, model, request_dataset, counts, body, field):
    ds = request_dataset(researcher)
    before = counts()
    r = vote(api, admin, ds["id"], body)
    assert r.status_code == 422 and r.json()["error"]["field"] == field
    assert counts() == before


def test_blind_voting(api, researcher, admin, admin2, model, request_dataset, settings_env, make_user):
    settings_env(reviews_required=3)
    ds = request_dataset(researcher)
    vote(api, admin, ds["id"], {"decision": "approve", "reason": "secret reasoning of admin one"})

    # admin2 has not voted: no decisions, reasons or counts anywhere they can look.
    [item] = api.get("/v1/reviews?status=pending", headers=admin2.headers).json()["reviews"]
    assert item["review"] == {"approvals_required": 3, "approvals_given": None, "blind": True, "can_vote": True,
                              "your_vote": None, "votes": None}
    for path in (f"/v1/datasets/{ds['id']}/card", f"/v1/datasets/{ds['id']}/evidence", "/v1/reviews", "/v1/audit"):
        r = api.get(path, headers=admin2.headers)
        assert r.status_code == 200, path
        assert "secret reasoning" not in r.text, path
    cast = [e for e in api.get("/v1/audit?action=review.cast", headers=admin2.headers).json()["events"]]
    assert cast and all("decision" not in e["details"] for e in cast)

    # admin one sees their own vote and the tally.
    [mine] = api.get("/v1/reviews", headers=admin.headers).json()["reviews"]
    assert mine["review"]["approvals_given"] == 1 and mine["review"]["your_vote"]["decision"] == "approve"
    assert mine["review"]["can_vote"] is False

    # After voting, admin2 sees everything.
    r = vote(api, admin2, ds["id"], {"decision": "approve", "reason": "fine by me"})
    state = r.json()["review"]
    assert state["blind"] is False and state["approvals_given"] == 2
    assert {v["reason"] for v in state["votes"]} == {"secret reasoning of admin one", "fine by me"}
    assert "secret reasoning" in api.get("/v1/audit?action=review.cast", headers=admin2.headers).text

    # Researchers see counts only, never reviewers or reasons.
    card = api.get(f"/v1/datasets/{ds['id']}/card", headers=researcher.headers).json()
    assert card["provisional"] is True and card["review"] == {"approvals_required": 3, "approvals_given": 2}
    assert "secret" not in api.get(f"/v1/datasets/{ds['id']}/card", headers=researcher.headers).text


def test_queue_lists_pending_with_links(api, researcher, admin, model, request_dataset):
    a = request_dataset(researcher, conditions={"Mass": 3})
    b = request_dataset(researcher, conditions={"Nodule": 4})
    api.post(f"/v1/datasets/{b['id']}/cancel", headers=researcher.headers)
    r = api.get("/v1/reviews?status=pending", headers=admin.headers)
    assert r.status_code == 200
    [item] = r.json()["reviews"]
    assert item["dataset"]["id"] == a["id"] and item["researcher"] == researcher.name
    assert item["model"]["name"] == "cxr-dcgan" and item["purpose"].startswith("Pre-training")
    assert item["links"]["evidence"] == f"/v1/datasets/{a['id']}/evidence"
    assert item["links"]["evidence_pairs"].endswith("/evidence/pairs.png")
    assert [i["dataset"]["id"] for i in api.get("/v1/reviews?status=cancelled", headers=admin.headers).json()["reviews"]] == [b["id"]]
    assert api.get("/v1/reviews?status=bogus", headers=admin.headers).status_code == 422


def test_broker_down_leaves_dataset_approved_and_logs(api, researcher, admin, model, request_dataset, settings_env, caplog):
    from service.embedded import free_port

    ds = request_dataset(researcher)
    settings_env(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="xraysynth.datasets"):
        r = vote(api, admin, ds["id"])
    assert r.status_code == 200 and r.json()["enqueued"] is False
    assert api.get(f"/v1/datasets/{ds['id']}", headers=researcher.headers).json()["status"] == "approved"
    assert any("could not be enqueued" in rec.getMessage() and ds["id"] in rec.getMessage() for rec in caplog.records)


def test_evidence_before_and_after_generation(api, researcher, admin, model, request_dataset):
    ds = request_dataset(researcher)
    r = api.get(f"/v1/datasets/{ds['id']}/evidence", headers=admin.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["generation"] is None and "not run" in body["note"]
    assert body["model"]["calibration"]["same_patient_counts"] == [40, 3, 1]  # histograms for admins
    assert body["model"]["membership_inference"]["attacks"]["distance"]["auc"] == 0.51
    assert body["links"]["pairs_png"] == f"/v1/datasets/{ds['id']}/evidence/pairs.png"
    assert api.get(body["links"]["pairs_png"], headers=admin.headers).status_code == 404
    assert api.get(body["links"]["preview_png"], headers=admin.headers).status_code == 404

    pairs = b"\x89PNG\r\n\x1a\nsynthetic beside nearest real"
    put_private_object(f"evidence/{ds['id']}/evidence.json", b'{"flagged": 3, "regenerated": 3, "min_score": 0.7}')
    put_private_object(f"evidence/{ds['id']}/pairs.png", pairs, "image/png")
    put_release_object(f"datasets/{ds['id']}/preview.png", b"\x89PNG preview")
    body = api.get(f"/v1/datasets/{ds['id']}/evidence", headers=admin.headers).json()
    assert body["generation"] == {"flagged": 3, "regenerated": 3, "min_score": 0.7} and body["note"] is None
    r = api.get(body["links"]["pairs_png"], headers=admin.headers)
    assert r.status_code == 200 and r.content == pairs and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"
    assert api.get(body["links"]["preview_png"], headers=admin.headers).content == b"\x89PNG preview"


def test_researchers_never_reach_evidence(api, researcher, model, request_dataset):
    ds = request_dataset(researcher)  # even for their own dataset
    put_private_object(f"evidence/{ds['id']}/pairs.png", b"real pixels", "image/png")
    for suffix in ("/evidence", "/evidence/pairs.png", "/evidence/preview.png"):
        r = api.get(f"/v1/datasets/{ds['id']}{suffix}", headers=researcher.headers)
        assert r.status_code == 403 and b"real pixels" not in r.content


def test_retry_of_a_failed_dataset_enqueues_again(api, researcher, admin, dataset_at, infra, db):
    ds_id = dataset_at(researcher, "failed")
    r = api.post(f"/v1/datasets/{ds_id}/retry", json={"note": "storage back"}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["error"] is None
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"]) == [("xraysynth.plan_dataset", [str(ds_id)])]
    assert audit_actions(db, ds_id) == ["dataset.retry"]


def test_a_failed_dataset_of_a_retired_generator_cannot_be_retried(api, researcher, admin, model, dataset_at, infra,
                                                                   counts):
    ds_id = dataset_at(researcher, "failed")
    assert api.post(f"/v1/models/{model.id}/retire", headers=admin.headers).status_code == 200
    before = counts()
    r = api.post(f"/v1/datasets/{ds_id}/retry", json={"note": "storage back"}, headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_retired", r.text
    assert counts() == before  # still failed, no audit event, nothing queued
    assert api.get(f"/v1/datasets/{ds_id}", headers=admin.headers).json()["status"] == "failed"
    assert queued_tasks(infra.env["XRAYSYNTH_BROKER_URL"]) == []
