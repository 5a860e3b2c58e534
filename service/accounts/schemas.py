from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, model_validator

from service.accounts.models import Role

AccountName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=2, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@-]*$")
]
Quota = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class AccountCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "dr-jane-doe@uni.example", "role": "researcher", "image_quota": 50000},
                {"name": "radiology-admin-2", "role": "admin"},
            ]
        },
    )
    name: AccountName
    role: Role
    image_quota: Quota | None = Field(None, description="images this account may request in total (default from settings)")


class AccountUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image_quota": 200000}, {"disabled": True}]},
    )
    image_quota: Quota | None = None
    disabled: StrictBool | None = None

    @model_validator(mode="after")
    def _something(self) -> AccountUpdate:
        if self.image_quota is None and self.disabled is None:
            raise ValueError("give image_quota and/or disabled")
        return self


class KeyPublic(BaseModel):
    id: uuid.UUID
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class NewKey(KeyPublic):
    key: str = Field(description="the API key itself: shown once, never again")


class AccountPublic(BaseModel):
    id: uuid.UUID
    name: str
    role: Role
    image_quota: int
    images_used: int
    disabled: bool
    created_at: datetime
    keys: list[KeyPublic]


class AccountList(BaseModel):
    accounts: list[AccountPublic]


class AccountCreated(BaseModel):
    account: AccountPublic
    api_key: NewKey
