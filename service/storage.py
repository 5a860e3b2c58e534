"""S3-compatible storage (SeaweedFS here, MinIO/AWS elsewhere) through boto3.

Two clients: `internal` talks to the store from services and workers; `presigner` is built on the
*public* endpoint, because a SigV4 signature covers the Host header and must match the host the
researcher's client will connect to.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from service.settings import Settings, get_settings

# Large shard tars go up in parts (workers/retry.py), a failed part retried alone.
MULTIPART_THRESHOLD = 16 * 1024 * 1024


def _client(settings: Settings, endpoint: str, *, retries: int = 3, timeout: float = 10.0):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=max(timeout, 60.0),
        ),
    )


@lru_cache
def internal_client():
    s = get_settings()
    return _client(s, s.s3_endpoint_url)


@lru_cache
def presigner():
    s = get_settings()
    return _client(s, s.public_endpoint)


@lru_cache
def _ping_client():
    # Health checks fail fast (one try, 2 s); one client for all of them, as building one costs
    # milliseconds of CPU per /v1/health.
    s = get_settings()
    return _client(s, s.s3_endpoint_url, retries=1, timeout=2.0)


def reset_clients() -> None:
    internal_client.cache_clear()
    presigner.cache_clear()
    _ping_client.cache_clear()


def ensure_buckets() -> None:
    s = get_settings()
    client = internal_client()
    for bucket in (s.release_bucket, s.private_bucket):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)


def put_bytes(bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    """Upload and return the sha256 of what was uploaded."""
    internal_client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return hashlib.sha256(data).hexdigest()


def get_bytes(bucket: str, key: str) -> bytes:
    return internal_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def exists(bucket: str, key: str) -> bool:
    try:
        internal_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def delete_prefix(bucket: str, prefix: str) -> int:
    client = internal_client()
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def presign_get(bucket: str, key: str, expires_in: int, filename: str | None = None) -> str:
    params = {"Bucket": bucket, "Key": key}
    if filename:
        params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    return presigner().generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)


def ping() -> None:
    _ping_client().head_bucket(Bucket=get_settings().release_bucket)
