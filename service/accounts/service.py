from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

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
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(plain_key, get_settings().api_key_pepper)))
    if key is None or key.revoked_at is not None:
        return None
    return key.account, key
