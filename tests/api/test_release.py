"""Downloads through SigV4 presigned URLs checked by a real S3 server (SeaweedFS), the dataset card, and
revocation (objects deleted, earlier URLs refused, later downloads 410)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.factories import make_model_version

EXPECTED = ["manifest.csv", "dataset_card.md", "dataset_card.json", "preview.png",
            "shards/shard-00000.tar", "shards/shard-00001.tar"]


def download(api, user, ds_id, **params):
    return api.get(f"/v1/datasets/{ds_id}/download", params=params, headers=user.headers)


def test_download_gives_signed_urls_that_return_the_bytes(api, researcher, ready_dataset, infra, db):
    r = download(api, researcher, ready_dataset["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["name"] for f in body["files"]] == EXPECTED
    assert body["expires_in"] == 3600
    for f in body["files"]:
        data = ready_dataset["files"][f["name"]]
        assert f["size"] == len(data) and f["sha256"] == ready_dataset["sha256"][f["name"]]
        assert f["url"].startswith(infra.s3.endpoint) and "X-Amz-Signature=" in f["url"]
        got = httpx.get(f["url"], timeout=10)
        assert got.status_code == 200 and got.content == data

    from service.audit.models import AuditEvent

    [event] = db.query(AuditEvent).filter_by(action="dataset.download_urls").all()
    assert event.actor_id == researcher.id and event.details["count"] == 6 and event.details["expires_in"] == 3600


def test_sha256_is_computed_when_the_metadata_is_missing(api, researcher, ready_dataset):
    from tests.factories import put_release_object

    data = b"index,file\n0,000000.png\n"
    digest = put_release_object(f"datasets/{ready_dataset['id']}/manifest.csv", data, sha256_metadata=False)
    files = {f["name"]: f for f in download(api, researcher, ready_dataset["id"]).json()["files"]}
    assert files["manifest.csv"]["sha256"] == digest and files["manifest.csv"]["size"] == len(data)


def test_expired_url_is_refused(api, researcher, ready_dataset):
    body = download(api, researcher, ready_dataset["id"], expires_in=1).json()
    url = body["files"][0]["url"]
    time.sleep(2.2)
    assert httpx.get(url, timeout=10).status_code == 403


def _tamper_signature(url: str) -> str:
    parts = urlsplit(url)
    q = parse_qsl(parts.query)
    q = [(k, (v[:-1] + ("0" if v[-1] != "0" else "1")) if k == "X-Amz-Signature" else v) for k, v in q]
    return urlunsplit(parts._replace(query=urlencode(q)))


def _tamper_key(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.replace("shard-00000", "shard-00001")))


@pytest.mark.parametrize("tamper", [_tamper_signature, _tamper_key], ids=["signature", "key"])
def test_tampered_url_is_refused(api, researcher, ready_dataset, tamper):
    files = {f["name"]: f for f in download(api, researcher, ready_dataset["id"]).json()["files"]}
    url = files["shards/shard-00000.tar"]["url"]
    assert httpx.get(url, timeout=10).status_code == 200
    bad = tamper(url)
    assert bad != url
    assert httpx.get(bad, timeout=10).status_code == 403


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
def test_expiry_out_of_range_is_422_naming_expires_in(api, researcher, ready_dataset, counts, expires_in):
    before = counts()
    r = download(api, researcher, ready_dataset["id"], expires_in=expires_in)
    assert r.status_code == 422 and r.json()["error"]["field"] == "expires_in"
    assert counts() == before


def test_expiry_of_seven_days_is_allowed(api, researcher, ready_dataset):
    r = download(api, researcher, ready_dataset["id"], expires_in=7 * 24 * 3600)
    assert r.status_code == 200 and r.json()["expires_in"] == 604800


def test_expiry_must_be_an_integer(api, researcher, ready_dataset):
    r = download(api, researcher, ready_dataset["id"], expires_in="soon")
    assert r.status_code == 422 and r.json()["error"]["field"] == "expires_in"


@pytest.mark.parametrize("status", ["pending_review", "approved", "generating", "failed", "rejected", "cancelled"])
def test_not_ready_is_409(api, researcher, dataset_at, counts, status):
    ds_id = dataset_at(researcher, status)
    before = counts()
    r = download(api, researcher, ds_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"
    assert counts() == before


def test_revoke_deletes_objects_and_refuses_earlier_urls(api, researcher, admin, ready_dataset, db, infra):
    ds_id = ready_dataset["id"]
    urls = [f["url"] for f in download(api, researcher, ds_id).json()["files"]]
    assert httpx.get(urls[0], timeout=10).status_code == 200

    r = api.post(f"/v1/datasets/{ds_id}/revoke", json={"reason": "consent withdrawn"}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    for url in urls:
        assert httpx.get(url, timeout=10).status_code in (403, 404)
    from service.settings import get_settings
    from service.storage import internal_client

    listed = internal_client().list_objects_v2(Bucket=get_settings().release_bucket, Prefix=f"datasets/{ds_id}/")
    assert listed.get("KeyCount", 0) == 0

    r = download(api, researcher, ds_id)
    assert r.status_code == 410 and r.json()["error"]["code"] == "revoked"

    from service.audit.models import AuditEvent

    db.rollback()
    [event] = db.query(AuditEvent).filter_by(action="dataset.revoke").all()
    assert event.details["reason"] == "consent withdrawn" and event.details["objects_deleted"] == 6
    assert event.actor_id == admin.id


def test_revoke_needs_a_reason_and_a_ready_dataset(api, researcher, admin, dataset_at, ready_dataset, counts):
    before = counts()
    r = api.post(f"/v1/datasets/{ready_dataset['id']}/revoke", json={}, headers=admin.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "reason"
    pending = dataset_at(researcher, "pending_review")
    before = counts()
    r = api.post(f"/v1/datasets/{pending}/revoke", json={"reason": "x"}, headers=admin.headers)
    assert r.status_code == 409
    assert counts() == before


def test_revoke_when_storage_is_down_changes_nothing(api, researcher, admin, ready_dataset, counts, settings_env):
    from service.embedded import free_port

    before = counts()
    # Storage unreachable (a closed port: quicker than stopping the shared server).
    settings_env(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    r = api.post(f"/v1/datasets/{ready_dataset['id']}/revoke", json={"reason": "x"}, headers=admin.headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable"
    assert counts() == before
    assert api.get(f"/v1/datasets/{ready_dataset['id']}", headers=admin.headers).json()["status"] == "ready"


def test_card_of_a_ready_dataset_is_the_published_one(api, researcher, admin, ready_dataset):
    for user in (researcher, admin):
        r = api.get(f"/v1/datasets/{ready_dataset['id']}/card", headers=user.headers)
        assert r.status_code == 200
        assert r.json() == {"provisional": False, "dataset_id": str(ready_dataset["id"]), "title": "released card"}


def test_provisional_card_before_release(api, researcher, model, request_dataset):
    ds = request_dataset(researcher, seed=7)
    card = api.get(f"/v1/datasets/{ds['id']}/card", headers=researcher.headers).json()
    assert card["provisional"] is True and card["status"] == "pending_review"
    assert card["model"]["name"] == "cxr-dcgan" and card["model"]["version"] == "1.0"
    assert card["request"]["conditions"] == {"Mass": 10} and card["request"]["seed"] == 7
    assert card["model"]["privacy"]["memorisation_filter"]["same_patient_catch_rate"] == 0.96
    assert "bundle.pt" not in str(card) and "privacy_index" not in str(card)


def test_the_provisional_card_names_the_requested_conditions_whose_heatmaps_are_not_evidence(
        api, researcher, db, request_dataset):
    # A measured model card in which Mass heatmaps are uninformative and No Finding's are not.
    measured = json.loads((Path(__file__).resolve().parents[1] / "fixtures/plain_gradcam_heatmaps.json").read_text())
    make_model_version(db, name="cxr-dcgan", version="1.0", conditions=("No Finding", "Mass"),
                       card={"licences": ["CC BY 4.0"], "heatmaps": measured})
    db.commit()
    ds = request_dataset(researcher, conditions={"Mass": 3, "No Finding": 2})
    card = api.get(f"/v1/datasets/{ds['id']}/card", headers=researcher.headers).json()
    assert card["provisional"] is True
    section = card["heatmap_faithfulness"]
    assert list(section["uninformative_conditions"]) == ["Mass"]
    assert section["rule"] and section["method"]
    without = request_dataset(researcher, conditions={"Mass": 1}, heatmaps=False)
    assert "heatmap_faithfulness" not in api.get(f"/v1/datasets/{without['id']}/card", headers=researcher.headers).json()
