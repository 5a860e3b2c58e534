"""The worker's per-process cache of loaded model versions: bundle on the GPU if any, privacy index and
calibration, each download verified against the sha256 recorded at registration
(workers/registration.py)."""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from service.db import session_scope
from service.modelversions.models import ModelVersion
from service.settings import get_settings
from workers import retry
from workers.device import prepare_for_inference

log = logging.getLogger("xraysynth.worker.models")

CACHE_SIZE = 2  # a worker usually serves one model; two covers a switch-over without thrashing


@dataclass
class LoadedModel:
    model_version_id: uuid.UUID
    name: str
    version: str
    bundle: Any  # models.bundle.Bundle, on `device`
    privacy_index: Any  # models.privacy.PrivacyIndex
    calibration: Any  # models.privacy.Calibration
    device: str

    @property
    def meta(self) -> dict:
        return {"id": str(self.model_version_id), "name": self.name, "version": self.version}


_cache: OrderedDict[uuid.UUID, LoadedModel] = OrderedDict()
_lock = threading.Lock()


class IntegrityError(RuntimeError):
    """A downloaded checkpoint or index does not match the sha256 recorded at registration."""


def _verified(data: bytes, expected: str | None, what: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if expected and got != expected:
        raise IntegrityError(f"{what}: sha256 {got[:12]}… does not match the registered {expected[:12]}…")
    return data


def load_model(model_version_id: uuid.UUID, *, storage_hooks: dict | None = None) -> LoadedModel:
    """The model version's bundle, privacy index and calibration, cached per process (verified once)."""
    model_version_id = uuid.UUID(str(model_version_id))
    with _lock:
        if model_version_id in _cache:
            _cache.move_to_end(model_version_id)
            return _cache[model_version_id]

    # torch: the worker parent imports this module before it forks, so models/ loads on first use
    from models.bundle import load_bundle
    from models.privacy import Calibration, PrivacyIndex
    from models.sampling import pick_device

    with session_scope() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise LookupError(f"model version {model_version_id} not found")
        if not mv.privacy_index_key or not mv.privacy_calibration:
            raise IntegrityError(f"model version {mv.name}:{mv.version} has no privacy index; it cannot generate")
        keys = (mv.checkpoint_key, mv.checkpoint_sha256, mv.privacy_index_key, mv.privacy_index_sha256)
        name, version, cal = mv.name, mv.version, dict(mv.privacy_calibration)

    bucket = get_settings().private_bucket
    hooks = storage_hooks or {}
    ckpt = _verified(retry.get_object(bucket, keys[0], **hooks), keys[1], "checkpoint")
    index_bytes = _verified(retry.get_object(bucket, keys[2], **hooks), keys[3], "privacy index")
    device = pick_device().type  # "cuda" if the worker has a GPU, else "cpu"
    bundle = prepare_for_inference(load_bundle(ckpt, device=device))
    index = PrivacyIndex.load(index_bytes).to(device)
    loaded = LoadedModel(model_version_id, name, version, bundle, index, Calibration.from_dict(cal), device)
    with _lock:
        _cache[model_version_id] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    log.info("loaded model %s:%s on %s", name, version, device)
    return loaded


def clear_cache() -> None:
    with _lock:
        _cache.clear()
