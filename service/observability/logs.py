"""Log lines people can follow: one JSON object per line (time, level, logger, message, request id,
account, dataset, shard), or a readable line on a terminal. Every line passes a redaction step, so a
key, pepper or S3 secret that reaches a message by mistake is masked before it is written."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime

from service.settings import get_settings

# One mutable dict per request or task. Sync routes and dependencies run in copies of the context
# (thread pool), so a value bound there must mutate the shared dict rather than set the variable.
_context: ContextVar[dict | None] = ContextVar("xraysynth_log_context", default=None)

CONTEXT_FIELDS = ("request_id", "account_id", "dataset_id", "shard")
REQUEST_ID_HEADER = "X-Request-ID"
# What a client may send as its own request id; anything else is replaced (it lands in every line).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# API keys (xs_ + urlsafe base64) and bearer tokens, wherever they appear in a message.
_SECRET_PATTERNS = (re.compile(r"xs_[A-Za-z0-9_-]{20,}"), re.compile(r"(?i)(bearer\s+)[^\s'\",]+"))
# Record attributes that are not extra fields (uvicorn's color_message repeats the message with ANSI codes).
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
# One encoder for every line: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def request_id_from(header: str | None) -> str:
    """The client's id if it is a plain token, else a fresh one."""
    if header and _CLIENT_ID.match(header):
        return header
    # A correlation id, not a secret: the process's PRNG, without a getrandom() call per request.
    return f"{random.getrandbits(128):032x}"


def open_context(**fields: object) -> Token:
    """Start a request's or task's context (inheriting the enclosing one); close it with the token."""
    parent = _context.get()
    return _context.set({**(parent or {}), **{k: v for k, v in fields.items() if v is not None}})


def close_context(token: Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**fields: object) -> Iterator[dict]:
    """Bind fields (request_id, dataset_id, shard, …) to every line logged inside the block."""
    token = open_context(**fields)
    try:
        yield _context.get()
    finally:
        close_context(token)


def bind(**fields: object) -> None:
    """Add fields to the current request's or task's context (visible to lines logged after it)."""
    ctx = _context.get()
    if ctx is not None:
        ctx.update({k: v for k, v in fields.items() if v is not None})


def current(field: str) -> object | None:
    ctx = _context.get()
    return ctx.get(field) if ctx else None


class _Redactor:
    def __init__(self, secrets: list[str]):
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        # The substring tests first: nearly every line has neither, and they cost a tenth of a search.
        if "xs_" in text:
            text = _SECRET_PATTERNS[0].sub("[redacted]", text)
        if "bearer" in text.lower():
            text = _SECRET_PATTERNS[1].sub(r"\1[redacted]", text)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: _Redactor):
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "time": _utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = _context.get() or {}
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or ctx.get(name)
            if value is not None:
                out[name] = str(value)
        for key in sorted(record.__dict__.keys() - _STANDARD_ATTRS):
            if key not in out and not key.startswith("_"):
                value = record.__dict__[key]
                out[key] = value if isinstance(value, int | float | bool) or value is None else str(value)
        if record.exc_info:
            # The type only: exception text and frames can carry request data.
            out["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return self.redact(_JSON.encode(out))


_second: tuple[int, str] = (-1, "")


def _utc_time(created: float) -> str:
    """`2026-12-05T15:24:03.594+00:00`; the part up to the second is formatted once per second."""
    global _second
    whole, cached = int(created), _second  # one read: another thread may replace it meanwhile
    if cached[0] != whole:
        cached = _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{int((created - whole) * 1000):03d}+00:00"


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 INFO  xraysynth.api [req 3f2a… acct 81c0…] message` for a person at a terminal."""

    def __init__(self, redact: _Redactor):
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        ctx = _context.get() or {}
        tags = []
        for name, label in (("request_id", "req"), ("account_id", "acct"), ("dataset_id", "ds"), ("shard", "shard")):
            value = getattr(record, name, None) or ctx.get(name)
            if value is not None:
                text = str(value)
                tags.append(f"{label} {text[:8] if name != 'shard' else text}")
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{when} {record.levelname:<5} {record.name}" + (f" [{' '.join(tags)}]" if tags else "")
        line += f" {record.getMessage()}"
        if record.exc_info and record.exc_info[0]:
            line += f" ({record.exc_info[0].__name__})"
        return self.redact(line)


def _secrets_of_settings() -> list[str]:
    try:
        s = get_settings()
    except Exception:  # noqa: BLE001 — settings that refuse to load are reported elsewhere; redact what we can
        return [os.environ.get("XRAYSYNTH_API_KEY_PEPPER", ""), os.environ.get("XRAYSYNTH_S3_SECRET_ACCESS_KEY", "")]
    return [s.api_key_pepper, s.s3_secret_access_key, getattr(s, "metrics_token", None) or ""]


def lean_records() -> None:
    """No line written here carries the caller's file, thread, process or task name, so records need not
    look them up (the Logging HOWTO's "Optimization"): a third of an access line's cost. For the API
    process, which writes a line per request; a worker's Celery formats may still ask for them."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):
        logging.logAsyncioTasks = False


def configure_logging(fmt: str | None = None, level: str | int = "INFO") -> None:
    """Send every logger (ours, uvicorn's, Celery's) through one handler on stderr.

    ``fmt``: "json", "console", or None for XRAYSYNTH_LOG_FORMAT (default: console on a terminal,
    JSON otherwise). Idempotent: the factory and a worker may both call it.
    """
    fmt = (fmt or os.environ.get("XRAYSYNTH_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")).lower()
    redact = _Redactor(_secrets_of_settings())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter(redact) if fmt == "console" else JsonFormatter(redact))
    handler.set_name("xraysynth")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "xraysynth":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # The API writes its own access line (route template, status, duration, ids); uvicorn's would
    # repeat it with the raw path and query string.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    # Debug output of HTTP clients carries signed headers; never below WARNING in these logs.
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)
