"""Object storage from the worker, with bounded retries.

A storage outage must not lose work or spin forever: each call is retried with exponential backoff
(tenacity) for at most ``settings.storage_retry_budget_s``; meanwhile a callback lets the caller show
"storage unreachable since …" in the dataset's progress; when the budget is spent StorageUnavailable
is raised and the dataset fails with that reason (an admin retry resumes from the finished shards).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO, TypeVar

import tenacity
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from service import storage
from service.settings import get_settings
from workers import metrics

log = logging.getLogger("xraysynth.worker.storage")
T = TypeVar("T")

# Error codes S3-compatible stores answer while overloaded or restarting.
TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


class StorageUnavailable(RuntimeError):
    """The store stayed unreachable for the whole retry budget."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
                        BotoConnectionError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, S3UploadFailedError):  # boto3's transfer manager wraps whatever failed
        return True
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in TRANSIENT_CODES
    try:
        from urllib3.exceptions import HTTPError as Urllib3Error

        return isinstance(exc, Urllib3Error)
    except ImportError:  # pragma: no cover
        return False


# Called as on_outage(since, error_name) while retrying and on_recovered() after a retried call succeeds.
OutageHook = Callable[[datetime, str], None]


def retrying(
    fn: Callable[[], T],
    *,
    what: str,
    on_outage: OutageHook | None = None,
    on_recovered: Callable[[], None] | None = None,
    budget_s: float | None = None,
) -> T:
    """Run ``fn`` until it succeeds, retrying transient storage errors for at most the budget."""
    budget = get_settings().storage_retry_budget_s if budget_s is None else budget_s
    since: list[datetime] = []

    def attempt() -> T:
        try:
            return fn()
        except Exception as exc:
            metrics.error("s3")
            if not is_transient(exc):
                raise
            # Class names only: botocore messages can carry endpoints and signed parameters.
            log.warning("%s: storage unreachable (%s)", what, type(exc).__name__)
            if not since:
                since.append(datetime.now(UTC))
                if on_outage is not None:
                    try:
                        on_outage(since[0], type(exc).__name__)
                    except Exception:  # progress display must never break the retry loop
                        log.exception("could not record the storage outage")
            raise

    r = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential(multiplier=0.25, min=0.25, max=8.0),
        stop=tenacity.stop_after_delay(budget),
        before_sleep=lambda _state: metrics.retried("storage"),
        reraise=False,
    )
    try:
        result = r(attempt)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        raise StorageUnavailable(
            f"object storage unreachable for more than {budget:.0f} s while {what} "
            f"({type(last).__name__}); an admin retry resumes from the finished shards"
        ) from None
    if since and on_recovered is not None:
        on_recovered()
    return result


def put_object(bucket: str, key: str, data: bytes, content_type: str, **hooks) -> str:
    """Small object with its sha256 in the user metadata (the download API reads it from there)."""
    digest = hashlib.sha256(data).hexdigest()
    retrying(
        lambda: storage.internal_client().put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata={"sha256": digest}
        ),
        what=f"writing {key.rsplit('/', 1)[-1]}",
        **hooks,
    )
    return digest


def upload_fileobj(bucket: str, key: str, fileobj: BinaryIO, content_type: str, sha256: str, **hooks) -> None:
    """A large file (shard tar, manifest), multipart above service.storage.MULTIPART_THRESHOLD; its size
    in the store is checked against the file's before this returns."""
    from boto3.s3.transfer import TransferConfig

    fileobj.flush()  # the fresh handles below read the file itself, not this object's buffer
    size = os.fstat(fileobj.fileno()).st_size

    def go() -> None:
        # A fresh handle per attempt (a failed transfer closes the file it was given), from the start.
        with os.fdopen(os.dup(fileobj.fileno()), "rb") as f:
            f.seek(0)
            storage.internal_client().upload_fileobj(
                f, bucket, key,
                ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": sha256}},
                Config=TransferConfig(
                    multipart_threshold=storage.MULTIPART_THRESHOLD,
                    multipart_chunksize=storage.MULTIPART_THRESHOLD,
                    use_threads=False,  # one shard at a time per worker; threads add nothing but memory
                ),
            )

    retrying(go, what=f"uploading {key.rsplit('/', 1)[-1]}", **hooks)
    stored = head_object(bucket, key, **hooks)
    if stored is None or int(stored["ContentLength"]) != size:
        raise RuntimeError(f"{key.rsplit('/', 1)[-1]}: the store holds {stored and stored['ContentLength']} bytes, "
                           f"{size} were uploaded")


def get_object(bucket: str, key: str, **hooks) -> bytes:
    return retrying(lambda: storage.get_bytes(bucket, key), what=f"reading {key.rsplit('/', 1)[-1]}", **hooks)


def head_object(bucket: str, key: str, **hooks) -> dict | None:
    def go():
        try:
            return storage.internal_client().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    return retrying(go, what=f"checking {key.rsplit('/', 1)[-1]}", **hooks)


def delete_prefix(bucket: str, prefix: str, **hooks) -> int:
    return retrying(lambda: storage.delete_prefix(bucket, prefix), what=f"deleting {prefix}", **hooks)


def list_keys(bucket: str, prefix: str, **hooks) -> list[str]:
    def go() -> list[str]:
        keys = []
        for page in storage.internal_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    return retrying(go, what=f"listing {prefix}", **hooks)


def sha256_file(f: BinaryIO, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    f.seek(0)
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()

