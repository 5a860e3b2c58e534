from __future__ import annotations

import uuid

from fastapi import APIRouter, Body, Query

from service.deps import AdminDep, CallerDep, SessionDep, UnitOfWorkRoute
from service.errors import Forbidden, NotFound
from service.modelversions import service
from service.modelversions.models import ModelStatus
from service.modelversions.schemas import ConditionList, ModelList, ModelPublic, ModelTransition
from service.settings import get_settings

router = APIRouter(prefix="/v1", tags=["catalogue"], route_class=UnitOfWorkRoute)


@router.get("/conditions", response_model=ConditionList, summary="Conditions of published generators, with availability")
def list_conditions(session: SessionDep, caller: CallerDep):
    min_patients = get_settings().min_training_patients
    return {"min_training_patients": min_patients, "conditions": service.catalogue(session, min_patients=min_patients)}


@router.get("/models", response_model=ModelList, summary="Generator versions with their public cards")
def list_models(
    session: SessionDep,
    caller: CallerDep,
    status: ModelStatus = Query(ModelStatus.published, description="admins may list drafts"),
):
    if status == ModelStatus.draft and not caller.is_admin:
        raise Forbidden("draft model versions are visible to hospital admins only")
    min_patients = get_settings().min_training_patients
    models = service.list_models(session, statuses=[status])
    return {"models": [service.public_card(m, min_patients=min_patients, admin=caller.is_admin) for m in models]}


@router.get("/models/{model_id}", response_model=ModelPublic, summary="One generator version's public card")
def get_model(model_id: uuid.UUID, session: SessionDep, caller: CallerDep):
    mv = service.get_model(session, model_id=model_id)
    # Drafts do not exist as far as researchers know (same answer as an unknown id).
    if mv.status == ModelStatus.draft and not caller.is_admin:
        raise NotFound("model version not found")
    return service.public_card(mv, min_patients=get_settings().min_training_patients, admin=caller.is_admin)


@router.post("/models/{model_id}/publish", response_model=ModelPublic, summary="Publish a draft (needs its privacy index and calibration)")
def publish_model(model_id: uuid.UUID, session: SessionDep, caller: AdminDep, body: ModelTransition | None = Body(None)):
    mv = service.publish(session, model_id=model_id, actor=caller.actor, note=body.note if body else None)
    return service.public_card(mv, min_patients=get_settings().min_training_patients, admin=True)


@router.post("/models/{model_id}/retire", response_model=ModelPublic, summary="Retire a published version (existing datasets keep it)")
def retire_model(model_id: uuid.UUID, session: SessionDep, caller: AdminDep, body: ModelTransition | None = Body(None)):
    mv = service.retire(session, model_id=model_id, actor=caller.actor, note=body.note if body else None)
    return service.public_card(mv, min_patients=get_settings().min_training_patients, admin=True)
