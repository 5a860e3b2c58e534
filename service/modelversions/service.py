"""Generator versions: the catalogue researchers choose from, the release policy on conditions, and
the admin's publish/retire lifecycle."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Sequence

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from service.audit.service import Actor, record
from service.errors import Conflict, NotFound
from service.modelversions.models import ModelStatus, ModelVersion
from service.modelversions.schemas import PublicModelCard, PublicTrainingData
from service.timeutil import utcnow

# Keys that name storage locations or secrets; stripped from the free-form card/metrics documents
# before they reach a researcher (checkpoint and privacy-index locations are hospital-zone facts).
_PRIVATE_KEY = re.compile(r"(^|_)(key|keys|path|paths|bucket|checkpoint|s3|privacy_index|index_meta)($|_)", re.I)


# A location on a hospital machine or bucket, absolute or relative ("runs/gan/bundle.pt" in a training
# config): one word with a slash that is neither a web link nor a DOI (citations carry both).
_LOCAL_PATH = re.compile(r"^(?:s3://|file://|(?!(?:https?://|10\.\d{4,}/))[^\s]*/[^\s]*$)", re.I)


PUBLIC_CARD_FIELDS = tuple(k for k in PublicModelCard.model_fields if k != "training_data")
PUBLIC_TRAINING_DATA_FIELDS = tuple(PublicTrainingData.model_fields)


def researcher_card(card: dict) -> dict:
    """The card as researchers see it (PublicModelCard), with anything pointing into the private zone dropped."""
    out = {k: card[k] for k in PUBLIC_CARD_FIELDS if k in card}
    td = card.get("training_data")
    if isinstance(td, dict):
        out["training_data"] = {k: td.get(k) for k in PUBLIC_TRAINING_DATA_FIELDS if k in td}
    return PublicModelCard.model_validate(sanitise(out)).model_dump(exclude_unset=True)


def sanitise(doc: object) -> object:
    """Recursively drop fields that could point into the private zone."""
    if isinstance(doc, dict):
        return {k: sanitise(v) for k, v in doc.items() if not _PRIVATE_KEY.search(str(k))}
    if isinstance(doc, list):
        return [sanitise(v) for v in doc]
    if isinstance(doc, str) and _LOCAL_PATH.match(doc):
        return "[withheld]"
    return doc


def get_model(session: Session, *, model_id: uuid.UUID, for_update: bool = False) -> ModelVersion:
    q = select(ModelVersion).where(ModelVersion.id == model_id)
    if for_update:
        q = q.with_for_update().execution_options(populate_existing=True)
    mv = session.scalar(q)
    if mv is None:
        raise NotFound("model version not found")
    return mv


def list_models(session: Session, *, statuses: Collection[ModelStatus], options: Sequence = ()) -> list[ModelVersion]:
    """Newest first: the default model for a request is the newest published one that fits. `options`
    (e.g. load_only) spare a caller the large JSON columns it does not read."""
    q = (
        select(ModelVersion)
        .options(*options)
        .where(ModelVersion.status.in_(list(statuses)))
        .order_by(ModelVersion.published_at.desc().nulls_last(), ModelVersion.created_at.desc())
    )
    return list(session.scalars(q))


# What choosing a model for a request reads (the release policy), not its card, metrics or
# calibration: plain rows, which cost a third of loading model objects on every request.
_PUBLISHED_POLICIES = (
    select(ModelVersion.id, ModelVersion.name, ModelVersion.version, ModelVersion.conditions,
           ModelVersion.patients_per_condition, ModelVersion.status, ModelVersion.published_at,
           ModelVersion.created_at)
    .where(ModelVersion.status == ModelStatus.published)
    .order_by(ModelVersion.published_at.desc().nulls_last(), ModelVersion.created_at.desc())
)
ModelPolicy = Row  # a row of _PUBLISHED_POLICIES: a model's id, name, version, conditions, patients, status


def published_policies(session: Session) -> list[ModelPolicy]:
    """Published models newest first (as list_models), as rows with the columns the release policy reads;
    on the session's connection, past the ORM's statement layer (see datasets.service._COMMITTED)."""
    return list(session.connection().execute(_PUBLISHED_POLICIES).all())


def resolve_model(session: Session, *, ref: str) -> ModelVersion | None:
    """A model given as its id or as "name:version"; any status (the caller applies the policy)."""
    try:
        return session.get(ModelVersion, uuid.UUID(ref))
    except ValueError:
        pass
    name, sep, version = ref.rpartition(":")
    if not sep:
        return None
    return session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))


def availability(mv: ModelVersion, condition: str, *, min_patients: int) -> tuple[bool, str | None]:
    """Release policy: a condition learnt from too few patients is not offered (re-identification risk)."""
    if condition not in (mv.conditions or []):
        return False, f"{mv.name}:{mv.version} does not offer {condition}"
    patients = (mv.patients_per_condition or {}).get(condition)
    if patients is None:
        return False, f"{condition}: the number of training patients is not recorded; policy requires at least {min_patients}"
    if patients < min_patients:
        return False, f"{condition}: trained on {patients} patients; policy requires at least {min_patients}"
    return True, None


def condition_offers(mv: ModelVersion, *, min_patients: int) -> list[dict]:
    out = []
    for cond in mv.conditions or []:
        ok, reason = availability(mv, cond, min_patients=min_patients)
        out.append({"name": cond, "patients": (mv.patients_per_condition or {}).get(cond), "available": ok, "reason": reason})
    return out


def catalogue(session: Session, *, min_patients: int) -> list[dict]:
    """Every condition of a published model, available if at least one published model may offer it."""
    by_name: dict[str, dict] = {}
    for mv in list_models(session, statuses=[ModelStatus.published]):
        for offer in condition_offers(mv, min_patients=min_patients):
            entry = by_name.setdefault(offer["name"], {"name": offer["name"], "models": []})
            entry["models"].append({"id": mv.id, "name": mv.name, "version": mv.version, **{k: offer[k] for k in ("patients", "available", "reason")}})
    for entry in by_name.values():
        entry["available"] = any(m["available"] for m in entry["models"])
        entry["reason"] = None if entry["available"] else "; ".join(m["reason"] for m in entry["models"])
    return list(by_name.values())


def privacy_summary(mv: ModelVersion) -> dict:
    """Aggregates a researcher may see: calibration rates, DP budget, membership-inference AUCs."""
    cal = mv.privacy_calibration or {}
    memorisation = (
        {k: cal.get(k) for k in ("threshold", "same_patient_catch_rate", "different_patient_flag_rate",
                                 "targets_met", "target_catch_rate", "target_flag_rate")}
        if cal else None
    )
    dp = {"epsilon": mv.dp_epsilon, "delta": mv.dp_delta} if mv.dp_epsilon is not None else None
    mia = membership_inference(mv)
    mia_summary = None
    if mia:
        aucs = {name: a["auc"] for name, a in (mia.get("attacks") or {}).items() if isinstance(a, dict) and "auc" in a}
        mia_summary = {"target": mia.get("target"), "target_met": mia.get("target_met"), "aucs": aucs}
    return {"memorisation_filter": memorisation, "differential_privacy": dp, "membership_inference": mia_summary}


def membership_inference(mv: ModelVersion) -> dict | None:
    """models.privacy.membership_inference()'s result, wherever the registry put it: metrics, the card or
    the card's privacy section."""
    card = mv.card or {}
    for doc in (mv.metrics or {}, card, card.get("privacy") or {}, card.get("metrics") or {}, mv.privacy_calibration or {}):
        if isinstance(doc, dict) and isinstance(doc.get("membership_inference"), dict):
            return doc["membership_inference"]
    return None


def publish_blockers(mv: ModelVersion) -> list[str]:
    problems = []
    if not mv.privacy_index_key:
        problems.append("it has no privacy index (the memorisation filter cannot run without one)")
    if not mv.privacy_calibration:
        problems.append("it has no privacy calibration (the memorisation threshold is unknown)")
    return problems


def public_card(mv: ModelVersion, *, min_patients: int, admin: bool = False) -> dict:
    metrics = {k: v for k, v in (mv.metrics or {}).items() if k != "membership_inference"}
    return {
        "id": mv.id,
        "name": mv.name,
        "version": mv.version,
        "architecture": mv.architecture,
        "image_size": mv.image_size,
        "status": mv.status,
        "created_at": mv.created_at,
        "published_at": mv.published_at,
        "training_fingerprint": mv.training_fingerprint,
        "conditions": condition_offers(mv, min_patients=min_patients),
        "metrics": sanitise(metrics),
        "privacy": privacy_summary(mv),
        "card": researcher_card(mv.card or {}),
        "publish_blockers": publish_blockers(mv) if admin else None,
    }


def publish(session: Session, *, model_id: uuid.UUID, actor: Actor, note: str | None = None) -> ModelVersion:
    mv = get_model(session, model_id=model_id, for_update=True)
    if mv.status != ModelStatus.draft:
        raise Conflict(f"model version is {mv.status.value}; only a draft can be published", code="invalid_transition")
    problems = publish_blockers(mv)
    if problems:
        raise Conflict("cannot publish: " + "; ".join(problems), code="not_publishable")
    mv.status = ModelStatus.published
    mv.published_at = utcnow()
    record(session, actor=actor, action="model.publish", target_type="model_version", target_id=mv.id,
           details={"name": mv.name, "version": mv.version, **({"note": note} if note else {})})
    return mv


def refuse_if_retired(session: Session, *, model_id: uuid.UUID, action: str, advice: str) -> None:
    """Nothing is generated from a retired generator (it may have been withdrawn for a privacy finding):
    approving a request made before its retirement, or retrying one that failed, is 409 model_retired."""
    mv = session.get(ModelVersion, model_id)
    if mv is not None and mv.status == ModelStatus.retired:
        raise Conflict(f"model {mv.name}:{mv.version} was retired, so this dataset cannot be {action}; {advice} "
                       "(the researcher can ask again with a published model)", code="model_retired")


def retire(session: Session, *, model_id: uuid.UUID, actor: Actor, note: str | None = None) -> ModelVersion:
    """New requests can no longer use it; existing datasets keep their provenance and releases."""
    mv = get_model(session, model_id=model_id, for_update=True)
    if mv.status != ModelStatus.published:
        raise Conflict(f"model version is {mv.status.value}; only a published version can be retired", code="invalid_transition")
    mv.status = ModelStatus.retired
    record(session, actor=actor, action="model.retire", target_type="model_version", target_id=mv.id,
           details={"name": mv.name, "version": mv.version, **({"note": note} if note else {})})
    return mv
