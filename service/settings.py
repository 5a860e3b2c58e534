"""One settings object for every process (API, worker, CLI), read from XRAYSYNTH_* variables.

Outside development the service refuses to start on the well-known default secrets or on an S3
store without credentials: a forgotten variable must fail loudly, not publish with a shared key.

Sources, first wins: arguments, the environment, `.env`, then the settings the one-box service
(`xraysynth run`) recorded in `<var dir>/settings.json`, then the defaults. The var dir is
XRAYSYNTH_VAR_DIR (environment or `.env`), else `./var`: the same rule in the running service and in
a command started from another shell of the same checkout, so both hash API keys with one pepper.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEV_API_KEY_PEPPER = "dev-only-pepper-change-me"
DEV_S3_ACCESS_KEY = "xraysynth-dev"
DEV_S3_SECRET_KEY = "xraysynth-dev-secret-change-me"
DEFAULT_VAR_DIR = "var"
ONEBOX_SETTINGS_FILE = "settings.json"


class _OneBoxSettingsSource(JsonConfigSettingsSource):
    """`<var dir>/settings.json` as written by `xraysynth run`; an unreadable file counts as absent
    (the commands that need a secret from it then refuse and say what to set)."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XRAYSYNTH_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"

    # Persistence and queue
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/xraysynth"
    broker_url: str = "redis://127.0.0.1:6379/0"
    rate_limit_storage_url: str = "redis://127.0.0.1:6379/1"
    # Used only with the embedded broker fallback (broker_url = "filesystem://").
    broker_folder: str = "var/broker"

    # Object storage: the internal endpoint is what services talk to; URLs handed to researchers are
    # signed for the public endpoint (SigV4 signs the Host header, so it must be the one they reach).
    s3_endpoint_url: str = "http://127.0.0.1:8333"
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str = DEV_S3_ACCESS_KEY
    s3_secret_access_key: str = DEV_S3_SECRET_KEY
    release_bucket: str = "xraysynth-release"
    private_bucket: str = "xraysynth-private"

    # Auth and limits
    api_key_pepper: str = DEV_API_KEY_PEPPER
    rate_limit: str = "120/minute"
    # Seconds a verified key is trusted without a database lookup; a revocation or a disabled account
    # made by another process takes this long to be obeyed (this process: at once). 0: look up always.
    auth_cache_s: float = Field(default=2.0, ge=0)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    default_image_quota: int = Field(default=100_000, ge=0)
    max_images_per_request: int = Field(default=1_000_000, gt=0)
    # Web console: a session unused this long is ended; failed sign-ins per client address.
    console_idle_timeout_s: int = Field(default=30 * 60, gt=0)
    console_login_rate_limit: str = "10/minute"

    # Database pool of each process (see service/db.py); waiting longer than the timeout for a
    # connection answers 503 database_unavailable.
    db_pool_size: int = Field(default=40, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_s: float = Field(default=10.0, gt=0)
    # The API's asyncio connections for the polled reads (status, lists) on PostgreSQL.
    db_read_pool_size: int = Field(default=8, ge=1)
    # Threads per API process that run REST and console routes with their commit (service.deps);
    # requests beyond wait their turn in arrival order.
    route_threads: int = Field(default=4, ge=1)

    # Review and release policy
    reviews_required: int = Field(default=1, ge=1)
    auto_approve_max_images: int = Field(default=0, ge=0)
    min_training_patients: int = Field(default=20, ge=1)

    # Generation
    shard_size: int = Field(default=1000, gt=0)
    generation_batch_size: int = Field(default=1024, gt=0)
    # A dataset in `generating` whose shards have made no progress for this long is failed with a reason.
    stale_generation_after_s: int = Field(default=1800, gt=0)
    # S3 outage budget inside one shard task before the dataset fails (admin retry resumes).
    storage_retry_budget_s: float = Field(default=120.0, gt=0)

    # Downloads
    download_expiry_default_s: int = Field(default=3600, gt=0)
    download_expiry_max_s: int = Field(default=7 * 24 * 3600, gt=0)

    # Where `xraysynth run` keeps its state (database fallback, S3 data, generated secrets, logs) and
    # the settings it runs with, for commands started elsewhere to read.
    var_dir: str = DEFAULT_VAR_DIR

    # A worker reports in the broker every this many seconds; /v1/health calls it missing after three
    # missed reports.
    worker_heartbeat_s: float = Field(default=5.0, gt=0)

    # Operations: outside development /metrics answers only `Authorization: Bearer <metrics_token>`
    # (and is 404 without one); log lines are "json", "console", or chosen by whether stderr is a tty.
    metrics_token: str | None = None
    log_format: Literal["json", "console"] | None = None
    # Each worker serves its metrics on this port (0: none); several workers on one host need distinct ones.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)

    # Hospital zone: where the training set of the shipped default model lives (for its privacy index)
    trainset_dir: str = "var/trainset"
    shared_data_dir: str = "../shared/data/cxr"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        found = init_settings().get("var_dir") or env_settings().get("var_dir") or dotenv_settings().get("var_dir")
        onebox = _OneBoxSettingsSource(settings_cls, json_file=onebox_settings_path(found))
        return init_settings, env_settings, dotenv_settings, onebox, file_secret_settings

    @property
    def pepper_is_default(self) -> bool:
        """No pepper configured anywhere: a key hashed now matches only a service that has none either."""
        return self.api_key_pepper == DEV_API_KEY_PEPPER

    @property
    def public_endpoint(self) -> str:
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        problems = []
        if self.api_key_pepper == DEV_API_KEY_PEPPER or len(self.api_key_pepper) < 16:
            problems.append("XRAYSYNTH_API_KEY_PEPPER is the development default or shorter than 16 characters")
        # Name each variable to set: the message is all an operator sees when the service refuses.
        empty = [f"XRAYSYNTH_{name.upper()}" for name in ("s3_access_key_id", "s3_secret_access_key") if not getattr(self, name)]
        if empty:
            problems.append(f"the S3 store has no credentials ({' and '.join(empty)} empty)")
        elif self.s3_access_key_id == DEV_S3_ACCESS_KEY or self.s3_secret_access_key == DEV_S3_SECRET_KEY:
            problems.append("XRAYSYNTH_S3_ACCESS_KEY_ID / XRAYSYNTH_S3_SECRET_ACCESS_KEY are the development defaults")
        if problems:
            raise ValueError(f"refusing to start in {self.environment}: " + "; ".join(problems))
        return self


def onebox_settings_path(var_dir: str | Path | None = None) -> Path:
    """Where `xraysynth run` records its settings (relative var dirs are relative to the working directory,
    like `.env`)."""
    return Path(var_dir or DEFAULT_VAR_DIR) / ONEBOX_SETTINGS_FILE


@lru_cache
def get_settings() -> Settings:
    return Settings()
