"""API keys: 256 random bits, shown once, stored as HMAC-SHA256 under a server pepper.

A keyed fast hash is the right tool for high-entropy tokens (no dictionary to slow down), and the
pepper means a leaked database alone cannot be used to test guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "xs_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]
