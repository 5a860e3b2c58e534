"""Deterministic latents: image i's z depends on (seed, i, attempt) only.

A counter-based generator (splitmix64 finaliser) feeds Box-Muller, all vectorised in numpy.
There is no RNG state, so any image of any dataset can be regenerated on its own, on any
machine, from its provenance row, and a shard rewritten after a crash is byte-identical.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# Domain separation so (seed, index, attempt) and the dimension counter never collide.
_K_INDEX = np.uint64(0xD1B54A32D192ED03)
_K_ATTEMPT = np.uint64(0x8CB92BA72F3D8DD7)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _uniform53(h: np.ndarray) -> np.ndarray:
    """uint64 -> float64 in (0, 1]: top 53 bits, shifted by one so log() never sees 0."""
    return ((h >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)


def latent_batch(seed: int, indices: np.ndarray, attempts: np.ndarray | int, nz: int) -> np.ndarray:
    """Standard-normal latents, float32 [B, nz], one row per (seed, index, attempt)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1).astype(np.uint64)
    att = np.broadcast_to(np.asarray(attempts, dtype=np.int64), idx.shape).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = splitmix64(np.full(idx.shape, np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)))
        key = splitmix64(key ^ (idx * _K_INDEX))
        key = splitmix64(key ^ (att * _K_ATTEMPT))  # [B]
        half = (nz + 1) // 2
        counter = np.arange(2 * half, dtype=np.uint64)  # two uniforms per Box-Muller pair
        h = splitmix64(key[:, None] + counter[None, :] * _GOLDEN)
    u = _uniform53(h)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    z = np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :nz]
    return np.ascontiguousarray(z, dtype=np.float32)
