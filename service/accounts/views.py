from __future__ import annotations

import uuid

from fastapi import APIRouter

from service.accounts import service
from service.accounts.models import Role
from service.accounts.schemas import (
    AccountCreate,
    AccountCreated,
    AccountList,
    AccountPublic,
    AccountUpdate,
    KeyPublic,
    NewKey,
)
from service.deps import AdminDep, SessionDep, UnitOfWorkRoute

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=UnitOfWorkRoute)


def _new_key(key, plain: str) -> dict:
    return {"id": key.id, "prefix": key.prefix, "created_at": key.created_at, "revoked_at": None, "key": plain}


@router.get("", response_model=AccountList, summary="Every account, with its keys (prefixes only) and quota use")
def list_accounts(session: SessionDep, caller: AdminDep, role: Role | None = None):
    return {"accounts": [service.to_public(session, a) for a in service.list_accounts(session, role=role)]}


@router.post("", status_code=201, response_model=AccountCreated, summary="Create a researcher or admin; its API key is shown once")
def create_account(body: AccountCreate, session: SessionDep, caller: AdminDep):
    account = service.create_account(session, name=body.name, role=body.role, actor=caller.actor, image_quota=body.image_quota)
    key, plain = service.create_key(session, account=account, actor=caller.actor)
    return {"account": service.to_public(session, account), "api_key": _new_key(key, plain)}


@router.get("/{account_id}", response_model=AccountPublic, summary="One account")
def get_account(account_id: uuid.UUID, session: SessionDep, caller: AdminDep):
    return service.to_public(session, service.get_account(session, account_id=account_id))


@router.patch("/{account_id}", response_model=AccountPublic, summary="Change quota or disable/enable")
def update_account(account_id: uuid.UUID, body: AccountUpdate, session: SessionDep, caller: AdminDep):
    account = service.update_account(session, account_id=account_id, actor=caller.actor,
                                     image_quota=body.image_quota, disabled=body.disabled)
    return service.to_public(session, account)


@router.post("/{account_id}/keys", status_code=201, response_model=NewKey, summary="Issue another API key (shown once)")
def create_key(account_id: uuid.UUID, session: SessionDep, caller: AdminDep):
    account = service.get_account(session, account_id=account_id)
    key, plain = service.create_key(session, account=account, actor=caller.actor)
    return _new_key(key, plain)


@router.delete("/{account_id}/keys/{key_id}", response_model=KeyPublic, summary="Revoke an API key (401 from then on)")
def revoke_key(account_id: uuid.UUID, key_id: uuid.UUID, session: SessionDep, caller: AdminDep):
    key = service.revoke_account_key(session, account_id=account_id, key_id=key_id, actor=caller.actor)
    return {"id": key.id, "prefix": key.prefix, "created_at": key.created_at, "revoked_at": key.revoked_at}
