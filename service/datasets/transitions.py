"""The one table of dataset status changes. The API, the workers, the watchdog and the docs diagram
all read it; `transition()` is the only code that writes `Dataset.status`, and it writes an
AuditEvent into the same transaction.

    python -m service.datasets.transitions          # print the Mermaid diagram
    python -m service.datasets.transitions --write  # refresh docs/dataset-states.md
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from service.audit.service import Actor, record
from service.datasets.models import Dataset, DatasetStatus
from service.errors import Conflict
from service.timeutil import utcnow

S = DatasetStatus


@dataclass(frozen=True)
class Transition:
    source: DatasetStatus
    target: DatasetStatus
    action: str
    by: frozenset[str]  # roles allowed to cause it: researcher (the owner), admin, system


def _t(source: S, target: S, action: str, *by: str) -> Transition:
    return Transition(source, target, action, frozenset(by))


TRANSITIONS: tuple[Transition, ...] = (
    # Approval is reached by the review policy (the admin whose vote completes it) or auto-approval.
    _t(S.pending_review, S.approved, "approve", "admin", "system"),
    _t(S.pending_review, S.rejected, "reject", "admin"),
    _t(S.approved, S.generating, "start_generation", "system"),
    _t(S.generating, S.ready, "release", "system"),
    _t(S.generating, S.failed, "fail", "system", "admin"),
    _t(S.failed, S.approved, "retry", "admin"),
    _t(S.ready, S.revoked, "revoke", "admin"),
    _t(S.pending_review, S.cancelled, "cancel", "researcher"),
    _t(S.approved, S.cancelled, "cancel", "researcher"),
    _t(S.generating, S.cancelled, "cancel", "researcher"),
)

TABLE: dict[tuple[DatasetStatus, DatasetStatus], Transition] = {(t.source, t.target): t for t in TRANSITIONS}
TERMINAL = frozenset(s for s in DatasetStatus if not any(t.source == s for t in TRANSITIONS))


class InvalidTransition(Conflict):
    code = "invalid_transition"


def allowed(source: DatasetStatus, target: DatasetStatus, role: str) -> bool:
    t = TABLE.get((source, target))
    return t is not None and role in t.by


def transition(
    session: Session,
    dataset: Dataset,
    target: DatasetStatus,
    *,
    actor: Actor,
    reason: str | None = None,
    details: dict | None = None,
) -> Transition:
    """Move `dataset` to `target` if the table allows it for this actor, with its audit event.

    The caller holds the row lock (SELECT … FOR UPDATE) and commits; a refused change raises
    InvalidTransition (HTTP 409) and writes nothing.
    """
    source = DatasetStatus(dataset.status)
    t = TABLE.get((source, target))
    if t is None or actor.role not in t.by:
        raise InvalidTransition(f"dataset is {source.value}; it cannot become {target.value}")
    dataset.status = target
    dataset.updated_at = utcnow()
    if target == S.failed:
        dataset.error = reason
    elif target in (S.approved, S.generating):
        dataset.error = None
    record(
        session,
        actor=actor,
        action=f"dataset.{t.action}",
        target_type="dataset",
        target_id=dataset.id,
        details={"from": source.value, "to": target.value, **({"reason": reason} if reason else {}), **(details or {})},
    )
    return t


def mermaid() -> str:
    lines = ["stateDiagram-v2", "    [*] --> pending_review"]
    for t in TRANSITIONS:
        lines.append(f"    {t.source.value} --> {t.target.value}: {t.action} ({', '.join(sorted(t.by))})")
    for s in sorted(TERMINAL):
        lines.append(f"    {s} --> [*]")
    return "\n".join(lines) + "\n"


DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "dataset-states.md"


def render_doc() -> str:
    return (
        "# Dataset states\n\n"
        "Generated from `service/datasets/transitions.py` by "
        "`python -m service.datasets.transitions --write`; a test fails when this file is stale.\n\n"
        "```mermaid\n" + mermaid() + "```\n"
    )


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC_PATH.write_text(render_doc())
        print(f"wrote {DOC_PATH}")
    else:
        print(mermaid(), end="")
