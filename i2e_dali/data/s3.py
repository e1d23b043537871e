"""What Python itself needs from S3: listing a prefix, small metadata files (class maps, shard index
files). The images and tar shards are read by DALI's own S3 support (the AWS SDK inside its wheel).

Both sides take credentials, region and endpoint from the standard AWS sources (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/{config,credentials}``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` for S3-compatible servers). Nothing here stores or prints them:
errors name the URL and the server's error code only.

boto3 is an optional dependency (``pip install boto3``); it is imported when an s3:// URL is used.
"""
from __future__ import annotations

import os

from ..errors import DatasetError, MissingDataError

__all__ = ["is_s3", "split_s3", "list_s3_objects", "read_s3_bytes", "s3_error"]


def is_s3(root) -> bool:
    return isinstance(root, str) and root.startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of ``s3://bucket/prefix``; the prefix ends with "/" (or is empty)."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise DatasetError(f"{url}: an S3 URL needs a bucket (s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def _client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise DatasetError("s3:// data sets need boto3 for listing (pip install boto3); DALI reads the data "
                           "itself") from exc
    # retries bounded, so a server that is down fails in seconds, never hangs
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=cfg)


def s3_error(url: str, exc: Exception) -> DatasetError:
    """A project error for a failed S3 call, naming the URL and the server's code (never credentials)."""
    code = ""
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = str(resp.get("Error", {}).get("Code", ""))
    if code in ("NoSuchBucket", "NoSuchKey", "404", "NotFound"):
        return MissingDataError(f"{url} does not exist on the S3 server ({code}); check the bucket and prefix")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return DatasetError(f"{url}: access denied by the S3 server ({code}); check the credentials "
                            "(AWS_PROFILE / AWS_ACCESS_KEY_ID) and the bucket policy")
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return DatasetError(f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                            "AWS_PROFILE")
    return DatasetError(f"{url}: S3 request failed ({name}{': ' + code if code else ''}); check AWS_ENDPOINT_URL, "
                        "the network and the bucket")


def list_s3_objects(url: str) -> list[tuple[str, int, int]]:
    """``(key relative to the prefix, size, mtime ns)`` of every object below ``s3://bucket/prefix``, sorted."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(url)
    out = []
    try:
        pages = _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if rel and not rel.endswith("/"):
                    out.append((rel, int(obj["Size"]), int(obj["LastModified"].timestamp() * 1e9)))
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(url, exc) from None
    # the order of a sorted local walk: a folder's files, then its sub-folders'
    out.sort(key=lambda o: (tuple(o[0].split('/')[:-1]), o[0].rsplit('/', 1)[-1]))
    return out


def read_s3_bytes(url: str) -> bytes:
    """The bytes of one (small) object."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(url)
    try:
        return _client().get_object(Bucket=bucket, Key=key.rstrip("/"))["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(url, exc) from None
