"""The one transition table: every allowed change works and writes exactly one audit event; every other
(source, target, role) is refused with 409 and writes nothing — directly and through the routes."""

from __future__ import annotations

import itertools

import pytest

from service.datasets.models import DatasetStatus
from service.datasets.transitions import DOC_PATH, TABLE, InvalidTransition, render_doc, transition
from tests.factories import make_dataset, make_model_version, row_counts

ROLES = ("researcher", "admin", "system")


def test_docs_diagram_is_not_stale():
    assert DOC_PATH.read_text() == render_doc(), "run `python -m service.datasets.transitions --write`"


def test_every_pair_of_states_for_every_role(db, researcher):
    from service.audit.models import AuditEvent
    from service.audit.service import Actor

    mv = make_model_version(db)
    checked = allowed_seen = 0
    for source, target, role in itertools.product(DatasetStatus, DatasetStatus, ROLES):
        savepoint = db.begin_nested()
        ds = make_dataset(db, account_id=researcher.id, model_version_id=mv.id, status=source.value)
        before = row_counts(db)
        actor = Actor(id=None if role == "system" else researcher.id, name=role, role=role)
        rule = TABLE.get((source, target))
        if rule is not None and role in rule.by:
            t = transition(db, ds, target, actor=actor, reason="because")
            db.flush()
            assert ds.status == target and t.target == target
            after = row_counts(db)
            assert after["audit_events"] == before["audit_events"] + 1, (source, target, role)
            assert {k: v for k, v in after.items() if k != "audit_events"} == {k: v for k, v in before.items() if k != "audit_events"}
            event = db.query(AuditEvent).order_by(AuditEvent.id.desc()).first()
            assert event.action == f"dataset.{rule.action}" and event.target_id == str(ds.id)
            assert event.details["from"] == source.value and event.details["to"] == target.value
            allowed_seen += 1
        else:
            with pytest.raises(InvalidTransition) as exc:
                transition(db, ds, target, actor=actor)
            assert exc.value.status_code == 409
            db.flush()
            assert ds.status == source and row_counts(db) == before, (source, target, role)
        checked += 1
        savepoint.rollback()
    assert checked == len(DatasetStatus) ** 2 * len(ROLES)
    assert allowed_seen == sum(len(t.by) for t in TABLE.values())


def test_failed_transition_records_the_reason_as_error(db, researcher):
    from service.audit.service import SYSTEM

    mv = make_model_version(db)
    ds = make_dataset(db, account_id=researcher.id, model_version_id=mv.id, status="generating")
    transition(db, ds, DatasetStatus.failed, actor=SYSTEM, reason="no heartbeat for 30 min")
    assert ds.error == "no heartbeat for 30 min"


# ------------------------------------------------------------------ the same table through the routes

# (route suffix, body, who, target status it asks for, the table's action it performs)
ROUTE_ACTIONS = [
    ("cancel", None, "researcher", DatasetStatus.cancelled, "cancel"),
    ("retry", None, "admin", DatasetStatus.approved, "retry"),
    ("revoke", {"reason": "withdrawn"}, "admin", DatasetStatus.revoked, "revoke"),
    ("reviews", {"decision": "approve", "reason": "ok"}, "admin", DatasetStatus.approved, "approve"),
    ("reviews", {"decision": "reject", "reason": "no"}, "admin", DatasetStatus.rejected, "reject"),
]


@pytest.mark.parametrize("action", ROUTE_ACTIONS, ids=lambda a: f"{a[0]}-{a[3].value}")
def test_route_transitions_follow_the_table(api, researcher, admin, dataset_at, counts, action):
    suffix, body, who, target, table_action = action
    user = researcher if who == "researcher" else admin
    for source in DatasetStatus:  # one test per route, every source state inside (fast: one setup)
        ds_id = dataset_at(researcher, source.value)
        before = counts()
        r = api.post(f"/v1/datasets/{ds_id}/{suffix}", json=body, headers=user.headers)
        rule = TABLE.get((source, target))
        if rule is not None and who in rule.by and rule.action == table_action:
            assert r.status_code == 200, (source, r.text)
            assert r.json().get("status", r.json().get("dataset", {}).get("status")) == target.value
            after = counts()
            # One event for the transition, plus the vote itself for reviews.
            expected = {**before, "audit_events": before["audit_events"] + (2 if suffix == "reviews" else 1)}
            if suffix == "reviews":
                expected["reviews"] += 1
            assert after == expected, source
        else:
            assert r.status_code == 409, (source, r.text)
            assert r.json()["error"]["code"] in ("invalid_transition", "not_pending")
            assert counts() == before, source
