"""Worker-only knobs. The Celery contract (task names, queue, configuration) is service/queue.py."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Worker-only settings (XRAYSYNTH_* like the rest); the shared ones live in service.settings."""

    model_config = SettingsConfigDict(env_prefix="XRAYSYNTH_", env_file=".env", extra="ignore")

    # A shard task holds a lease in Redis, refreshed every third of this; a worker killed mid-shard
    # loses it after this long and the sweeper hands the shard to another worker.
    lease_ttl_s: float = Field(default=60.0, gt=0)
    # How often each worker's sweeper thread looks for stuck work (one sweep per interval cluster-wide).
    sweep_interval_s: float = Field(default=30.0, gt=0)
    # A shard started this many times without finishing (its worker died each time) fails the dataset.
    max_shard_starts: int = Field(default=4, ge=1)
    # Memorisation filter: attempts per image before the dataset fails rather than release a copy.
    max_filter_attempts: int = Field(default=8, ge=1)
    # CPU processes that encode PNG/DICOM while the generator runs; 0 encodes inline (tests, tiny boxes).
    encode_processes: int | None = Field(default=None, ge=0)
    # Generation batch on CPU (the GPU uses settings.generation_batch_size, ≥ 1,024): the generator's
    # last layers hold B x 32 x 128 x 128 floats, so a CPU batch of 1,024 would need gigabytes.
    cpu_batch_size: int = Field(default=128, gt=0)
    # Pause between generation batches: lets a worker share a busy machine politely; the crash tests
    # use it so that a kill lands in the middle of a shard.
    batch_pause_s: float = Field(default=0.0, ge=0)
    # DICOM UID root for synthetic instances: never the hospital's root for real images. Default: an
    # ISO/IEC 9834-8 UUID arc (2.25.<uuid>) generated once for xraysynth; a hospital with its own OID
    # for synthetic data sets it here (must end with ".").
    dicom_uid_root: str = "2.25.228568378074534275219737398473140366002."

    @property
    def encode_pool_size(self) -> int:
        if self.encode_processes is not None:
            return self.encode_processes
        return max(1, (os.cpu_count() or 2) - 1)


@lru_cache
def worker_settings() -> WorkerSettings:
    return WorkerSettings()
