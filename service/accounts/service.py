from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from service.accounts.keys import display_prefix, hash_api_key, new_api_key
from service.accounts.models import Account, ApiKey, Role
from service.audit.service import Actor, record
from service.errors import Conflict, NotFound
from service.settings import get_settings
from service.timeutil import utcnow


def actor_of(account: Account) -> Actor:
    return Actor(id=account.id, name=account.name, role=account.role.value)


def get_by_name(session: Session, *, name: str) -> Account | None:
    return session.scalar(select(Account).where(Account.name == name))


def create_account(
    session: Session, *, name: str, role: Role, actor: Actor, image_quota: int | None = None
) -> Account:
    if get_by_name(session, name=name):
        raise Conflict(f"an account named {name!r} already exists", field="name", code="account_exists")
    account = Account(
        name=name,
        role=role,
        image_quota=get_settings().default_image_quota if image_quota is None else image_quota,
        disabled=False,
    )
    session.add(account)
    session.flush()
    record(session, actor=actor, action="account.create", target_type="account", target_id=account.id,
           details={"name": name, "role": role.value, "image_quota": account.image_quota})
    return account


def create_key(session: Session, *, account: Account, actor: Actor) -> tuple[ApiKey, str]:
    """Return the key row and the plain key; the plain key is never stored and cannot be shown again."""
    plain = new_api_key()
    key = ApiKey(account_id=account.id, prefix=display_prefix(plain), key_hash=hash_api_key(plain, get_settings().api_key_pepper))
    session.add(key)
    session.flush()
    record(session, actor=actor, action="key.create", target_type="api_key", target_id=key.id,
           details={"account": account.name, "prefix": key.prefix})
    return key, plain


def revoke_key(session: Session, *, key_id: uuid.UUID | None = None, prefix: str | None = None, actor: Actor) -> ApiKey:
    q = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    q = q.where(ApiKey.id == key_id) if key_id else q.where(ApiKey.prefix == prefix)
    keys = list(session.scalars(q))
    if not keys:
        raise NotFound("no active key matches")
    if len(keys) > 1:
        raise Conflict("several active keys match that prefix; give the key id")
    key = keys[0]
    key.revoked_at = utcnow()
    record(session, actor=actor, action="key.revoke", target_type="api_key", target_id=key.id, details={"prefix": key.prefix})
    return key


def account_for_key(session: Session, *, plain_key: str) -> tuple[Account, ApiKey] | None:
    return account_for_key_hash(session, key_hash=hash_api_key(plain_key, get_settings().api_key_pepper))


def account_for_key_hash(session: Session, *, key_hash: str) -> tuple[Account, ApiKey] | None:
    """The live key with this keyed hash and its account (the API hashes a key once per request)."""
    # One round trip: the account comes with its key (every request authenticates).
    key = session.scalar(select(ApiKey).options(joinedload(ApiKey.account)).where(ApiKey.key_hash == key_hash))
    if key is None or key.revoked_at is not None:
        return None
    return key.account, key


# ---------------------------------------------------------------- admin management (REST /v1/accounts)


def get_account(session: Session, *, account_id: uuid.UUID, for_update: bool = False) -> Account:
    q = select(Account).where(Account.id == account_id)
    if for_update:
        q = q.with_for_update().execution_options(populate_existing=True)
    account = session.scalar(q)
    if account is None:
        raise NotFound("account not found")
    return account


def list_accounts(session: Session, *, role: Role | None = None) -> list[Account]:
    q = select(Account).order_by(Account.created_at, Account.name)
    if role is not None:
        q = q.where(Account.role == role)
    return list(session.scalars(q))


def to_public(session: Session, account: Account) -> dict:
    from service.datasets.service import images_committed  # datasets depend on accounts, not the reverse

    keys = session.scalars(select(ApiKey).where(ApiKey.account_id == account.id).order_by(ApiKey.created_at))
    return {
        "id": account.id, "name": account.name, "role": account.role, "image_quota": account.image_quota,
        "images_used": images_committed(session, account_id=account.id), "disabled": account.disabled,
        "created_at": account.created_at,
        "keys": [{"id": k.id, "prefix": k.prefix, "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys],
    }


def update_account(
    session: Session, *, account_id: uuid.UUID, actor: Actor, image_quota: int | None = None, disabled: bool | None = None
) -> Account:
    account = get_account(session, account_id=account_id, for_update=True)
    if disabled and account.id == actor.id:
        # An admin locking themselves out is always a mistake; another admin can do it if meant.
        raise Conflict("you cannot disable your own account", field="disabled", code="self_disable")
    changes: dict = {}
    if image_quota is not None and image_quota != account.image_quota:
        changes["image_quota"] = {"from": account.image_quota, "to": image_quota}
        account.image_quota = image_quota
    if disabled is not None and disabled != account.disabled:
        changes["disabled"] = {"from": account.disabled, "to": disabled}
        account.disabled = disabled
    if changes:
        record(session, actor=actor, action="account.update", target_type="account", target_id=account.id,
               details={"name": account.name, **changes})
    return account


def revoke_account_key(session: Session, *, account_id: uuid.UUID, key_id: uuid.UUID, actor: Actor) -> ApiKey:
    key = session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.account_id == account_id).with_for_update()
    )
    if key is None:
        raise NotFound("no such key on this account")
    if key.revoked_at is not None:
        raise Conflict("this key is already revoked", code="already_revoked")
    return revoke_key(session, key_id=key.id, actor=actor)
