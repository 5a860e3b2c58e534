"""GET /v1/conditions, /v1/models, publish and retire."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import PURPOSE, random_id
from tests.factories import make_model_version


def test_conditions_with_availability_and_reason(api, researcher, model, db):
    make_model_version(db, name="small", version="1", conditions=["Hernia", "Pneumonia"],
                       patients_per_condition={"Hernia": 12, "Pneumonia": 50})
    make_model_version(db, name="draft", version="1", conditions=["Fibrosis"], status="draft")
    db.commit()
    r = api.get("/v1/conditions", headers=researcher.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["min_training_patients"] == 20
    by_name = {c["name"]: c for c in body["conditions"]}
    assert set(by_name) == {"No Finding", "Mass", "Nodule", "Hernia", "Pneumonia"}  # drafts not offered
    assert by_name["Mass"]["available"] is True and by_name["Mass"]["reason"] is None
    assert [m["name"] for m in by_name["Mass"]["models"]] == ["cxr-dcgan"]
    hernia = by_name["Hernia"]
    assert hernia["available"] is False
    assert "7 patients" in hernia["reason"] and "12 patients" in hernia["reason"] and "20" in hernia["reason"]
    assert {(m["name"], m["patients"], m["available"]) for m in hernia["models"]} == {("cxr-dcgan", 7, False), ("small", 12, False)}
    assert by_name["Pneumonia"]["available"] is True


def test_min_training_patients_is_a_setting(api, researcher, model, settings_env, request_dataset):
    settings_env(min_training_patients=5)
    hernia = {c["name"]: c for c in api.get("/v1/conditions", headers=researcher.headers).json()["conditions"]}["Hernia"]
    assert hernia["available"] is True
    request_dataset(researcher, conditions={"Hernia": 2})


def test_models_show_public_card_without_private_keys(api, researcher, model):
    r = api.get("/v1/models", headers=researcher.headers)
    assert r.status_code == 200
    [m] = r.json()["models"]
    assert m["id"] == str(model.id) and m["status"] == "published"
    assert m["privacy"]["memorisation_filter"]["same_patient_catch_rate"] == 0.96
    assert m["privacy"]["membership_inference"]["aucs"] == {"distance": 0.51, "discriminator": 0.53}
    assert m["privacy"]["differential_privacy"] is None
    assert m["metrics"]["precision"] == 0.9
    assert m["publish_blockers"] is None
    text = json.dumps(r.json())
    assert "bundle.pt" not in text and "privacy_index" not in text and "same_patient_counts" not in text
    one = api.get(f"/v1/models/{model.id}", headers=researcher.headers)
    assert one.status_code == 200 and one.json() == m


def test_model_card_drops_private_fields(api, researcher, db):
    mv = make_model_version(db, name="m", version="1", dp_epsilon=8.0, dp_delta=1e-5, card={
        "licences": {"training_images": {"CC BY 4.0": 100}},
        "config": {"data_dir": "/hospital/data"},
        "training": {"checkpoint_dir": "/runs/x"},
        "caveats": ["source and class are confounded"],
        "training_data": {"fingerprint": "abc", "patients_per_condition": {"Mass": 60}, "images_per_source": {"x": 1}},
    })
    db.commit()
    body = api.get(f"/v1/models/{mv.id}", headers=researcher.headers).json()
    assert body["card"] == {
        "licences": {"training_images": {"CC BY 4.0": 100}},
        "caveats": ["source and class are confounded"],
        "training_data": {"fingerprint": "abc", "patients_per_condition": {"Mass": 60}},
    }
    assert body["privacy"]["differential_privacy"] == {"epsilon": 8.0, "delta": 1e-5}


def test_drafts_are_for_admins_only(api, researcher, admin, db):
    draft = make_model_version(db, name="d", version="1", status="draft")
    db.commit()
    assert api.get("/v1/models?status=draft", headers=researcher.headers).status_code == 403
    assert api.get(f"/v1/models/{draft.id}", headers=researcher.headers).status_code == 404
    [m] = api.get("/v1/models?status=draft", headers=admin.headers).json()["models"]
    assert m["id"] == str(draft.id) and m["publish_blockers"] == []
    assert api.get("/v1/models", headers=admin.headers).json()["models"] == []


def test_publish_and_retire(api, researcher, admin, db):
    draft = make_model_version(db, name="g", version="2", status="draft", conditions=["Mass"])
    db.commit()
    r = api.post(f"/v1/models/{draft.id}/publish", json={"note": "signed off"}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["status"] == "published" and r.json()["published_at"]
    assert [m["id"] for m in api.get("/v1/models", headers=researcher.headers).json()["models"]] == [str(draft.id)]
    ds = api.post("/v1/datasets", json={"conditions": {"Mass": 1}, "purpose": PURPOSE}, headers=researcher.headers)
    assert ds.status_code == 202

    assert api.post(f"/v1/models/{draft.id}/publish", headers=admin.headers).status_code == 409
    r = api.post(f"/v1/models/{draft.id}/retire", headers=admin.headers)
    assert r.status_code == 200 and r.json()["status"] == "retired"
    assert api.post(f"/v1/models/{draft.id}/retire", headers=admin.headers).status_code == 409
    # New requests cannot use it; the existing dataset keeps it.
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 1}, "purpose": PURPOSE}, headers=researcher.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_condition"
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 1}, "purpose": PURPOSE, "model": "g:2"}, headers=researcher.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_retired"
    kept = api.get(f"/v1/datasets/{ds.json()['id']}", headers=researcher.headers).json()
    assert kept["model"]["id"] == str(draft.id) and kept["status"] == "pending_review"

    from service.audit.models import AuditEvent

    db.rollback()
    actions = [e.action for e in db.query(AuditEvent).filter_by(target_id=str(draft.id)).order_by(AuditEvent.id)]
    assert actions == ["model.publish", "model.retire"]


@pytest.mark.parametrize(
    "kwargs,words",
    [({"with_privacy_index": False}, "privacy index"), ({"with_calibration": False}, "calibration")],
)
def test_publish_needs_privacy_index_and_calibration(api, admin, db, counts, kwargs, words):
    draft = make_model_version(db, name="g", version="3", status="draft", **kwargs)
    db.commit()
    before = counts()
    r = api.post(f"/v1/models/{draft.id}/publish", headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_publishable"
    assert words in r.json()["error"]["message"]
    assert counts() == before


def test_unknown_model_is_404(api, admin):
    assert api.get(f"/v1/models/{random_id()}", headers=admin.headers).status_code == 404
    assert api.post(f"/v1/models/{random_id()}/publish", headers=admin.headers).status_code == 404


def test_model_card_withholds_relative_hospital_paths_but_keeps_links_and_dois(api, researcher, db):
    mv = make_model_version(db, name="rel", version="1", card={
        "metrics": {"config": {"model": "runs/gan/bundle.pt", "trainset": "runs/trainset", "split": "test"}},
        "how_to_cite": "10.1109/ICASSP.2018.8461430",
        "citations": {"nih": "https://nihcc.app.box.com/v/ChestXray-NIHCC"},
    })
    db.commit()
    body = api.get(f"/v1/models/{mv.id}", headers=researcher.headers).json()
    text = json.dumps(body)
    assert "runs/" not in text
    assert body["card"]["metrics"]["config"] == {"model": "[withheld]", "trainset": "[withheld]", "split": "test"}
    assert body["card"]["how_to_cite"] == "10.1109/ICASSP.2018.8461430"
    assert body["card"]["citations"] == {"nih": "https://nihcc.app.box.com/v/ChestXray-NIHCC"}
