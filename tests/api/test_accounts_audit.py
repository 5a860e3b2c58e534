"""/v1/accounts (create with a key shown once, quota, disable, keys) and /v1/audit (filters, cursor,
append-only)."""

from __future__ import annotations

import pytest

from tests.api.conftest import PURPOSE, random_id


def test_create_account_shows_the_key_once(api, admin, model):
    r = api.post("/v1/accounts", json={"name": "dr-erin", "role": "researcher", "image_quota": 25}, headers=admin.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    key = body["api_key"]["key"]
    assert key.startswith("xs_") and body["api_key"]["prefix"] == key[:9]
    assert body["account"]["image_quota"] == 25 and body["account"]["role"] == "researcher"
    # The key works, and is never shown again.
    assert api.get("/v1/conditions", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listing = api.get("/v1/accounts", headers=admin.headers)
    assert key not in listing.text and key not in api.get(f"/v1/accounts/{body['account']['id']}", headers=admin.headers).text
    erin = next(a for a in listing.json()["accounts"] if a["name"] == "dr-erin")
    assert [k["prefix"] for k in erin["keys"]] == [key[:9]]


def test_default_quota_and_admin_creation(api, admin):
    r = api.post("/v1/accounts", json={"name": "second-admin", "role": "admin"}, headers=admin.headers)
    assert r.status_code == 201 and r.json()["account"]["image_quota"] == 100_000
    key = r.json()["api_key"]["key"]
    assert api.get("/v1/audit", headers={"Authorization": f"Bearer {key}"}).status_code == 200


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"name": "x", "role": "researcher"}, 422, "name"),
        ({"name": "ok-name", "role": "superuser"}, 422, "role"),
        ({"name": "ok-name", "role": "researcher", "image_quota": -1}, 422, "image_quota"),
        ({"name": "ok-name", "role": "researcher", "image_quota": "10"}, 422, "image_quota"),
        ({"name": "ok-name", "role": "researcher", "is_root": True}, 422, "is_root"),
        ({"name": "carol-admin", "role": "researcher"}, 409, "name"),  # taken
    ],
)
def test_bad_account_requests_write_nothing(api, admin, counts, body, status, field):
    before = counts()
    r = api.post("/v1/accounts", json=body, headers=admin.headers)
    assert r.status_code == status and r.json()["error"]["field"] == field, r.text
    assert counts() == before


def test_patch_quota_and_disable(api, admin, researcher, model, db):
    r = api.patch(f"/v1/accounts/{researcher.id}", json={"image_quota": 5}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["image_quota"] == 5
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 6}, "purpose": PURPOSE}, headers=researcher.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "quota_exceeded"
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 5}, "purpose": PURPOSE}, headers=researcher.headers)
    assert r.status_code == 202
    assert api.get(f"/v1/accounts/{researcher.id}", headers=admin.headers).json()["images_used"] == 5

    assert api.patch(f"/v1/accounts/{researcher.id}", json={"disabled": True}, headers=admin.headers).json()["disabled"]
    assert api.get("/v1/datasets", headers=researcher.headers).status_code == 403

    from service.audit.models import AuditEvent

    db.rollback()
    updates = db.query(AuditEvent).filter_by(action="account.update").order_by(AuditEvent.id).all()
    assert [e.details.get("image_quota") for e in updates] == [{"from": 100_000, "to": 5}, None]
    assert updates[1].details["disabled"] == {"from": False, "to": True}


@pytest.mark.parametrize(
    "body,field",
    [({}, "body"), ({"disabled": "yes"}, "disabled"), ({"image_quota": 1.5}, "image_quota"), ({"role": "admin"}, "role")],
)
def test_bad_patch_is_422(api, admin, researcher, counts, body, field):
    before = counts()
    r = api.patch(f"/v1/accounts/{researcher.id}", json=body, headers=admin.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == field
    assert counts() == before


def test_admin_cannot_disable_themselves(api, admin):
    r = api.patch(f"/v1/accounts/{admin.id}", json={"disabled": True}, headers=admin.headers)
    assert r.status_code == 409


def test_keys_create_and_revoke_are_audited(api, admin, researcher, db):
    new = api.post(f"/v1/accounts/{researcher.id}/keys", headers=admin.headers)
    assert new.status_code == 201 and new.json()["key"].startswith("xs_")
    key_id = new.json()["id"]
    assert api.delete(f"/v1/accounts/{researcher.id}/keys/{key_id}", headers=admin.headers).status_code == 200
    assert api.delete(f"/v1/accounts/{researcher.id}/keys/{key_id}", headers=admin.headers).status_code == 409
    assert api.delete(f"/v1/accounts/{admin.id}/keys/{key_id}", headers=admin.headers).status_code == 404  # not theirs
    assert api.post(f"/v1/accounts/{random_id()}/keys", headers=admin.headers).status_code == 404

    from service.audit.models import AuditEvent

    db.rollback()
    mine = db.query(AuditEvent).filter(AuditEvent.actor_id == admin.id).order_by(AuditEvent.id).all()
    assert [e.action for e in mine] == ["key.create", "key.revoke"]


# ------------------------------------------------------------------ audit


def test_audit_filters_and_cursor(api, admin, researcher, model, request_dataset):
    ids = [request_dataset(researcher)["id"] for _ in range(3)]
    api.post(f"/v1/datasets/{ids[0]}/cancel", headers=researcher.headers)

    def get(**params):
        r = api.get("/v1/audit", params=params, headers=admin.headers)
        assert r.status_code == 200, r.text
        return r.json()

    assert [e["target_id"] for e in get(action="dataset.request")["events"]] == ids[::-1]
    assert [e["action"] for e in get(target_id=ids[0])["events"]] == ["dataset.cancel", "dataset.request"]
    assert {e["action"] for e in get(action="dataset.")["events"]} == {"dataset.request", "dataset.cancel"}
    assert len(get(actor=researcher.name)["events"]) == 4
    assert len(get(actor=str(researcher.id))["events"]) == 4
    assert {e["action"] for e in get(actor="system")["events"]} == {"account.create", "key.create"}

    page1 = get(action="dataset.request", limit=2)
    assert len(page1["events"]) == 2 and page1["next_before_id"] == page1["events"][-1]["id"]
    page2 = get(action="dataset.request", limit=2, before_id=page1["next_before_id"])
    assert [e["target_id"] for e in page2["events"]] == [ids[0]] and page2["next_before_id"] is None

    first = get(action="dataset.request")["events"][-1]
    assert get(since=first["at"], action="dataset.request")["events"][-1]["id"] == first["id"]
    assert get(until=first["at"], action="dataset.request")["events"] == []
    assert get(since="2999-01-01T00:00:00")["events"] == []


@pytest.mark.parametrize("params,field", [({"limit": 501}, "limit"), ({"limit": 0}, "limit"), ({"since": "yesterday"}, "since"),
                                          ({"before_id": "x"}, "before_id")])
def test_audit_bad_filters_are_422(api, admin, params, field):
    r = api.get("/v1/audit", params=params, headers=admin.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == field
