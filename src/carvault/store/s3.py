"""The S3-compatible blob store: the scale backend of ``carvault.store.blobs`` (``blob_store = s3://bucket/prefix``).

Every replica of a region talks to the same bucket, so what one replica stored every other one reads. Values are
objects under ``<prefix>/<key>``; an object PUT is atomic (readers see the old or the new object, never a part)
and acknowledged only once the server has stored it, which is what ``put(durable=True)`` promises. Reads of a
part of a value are ranged GETs.

One boto3 client serves every thread (boto3 clients are thread-safe); its connection pool is sized for the
gateway's and the web server's threads, and transient failures (connection resets, throttling, 5xx) are retried
with backoff by botocore's ``standard`` retry mode. What still fails becomes ``Unavailable`` (the gateway refuses
the group with 503 and keeps serving), and a missing object ``BlobNotFound``.

Credentials come from wherever any AWS client finds them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the
environment, a profile, an instance role); they are never settings of CarVault.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from carvault.errors import Unavailable
from carvault.store.blobs import BlobNotFound, check_key

#: Connections kept open to the server: the gateway's committer, the web server's worker threads, export workers.
POOL_CONNECTIONS = 64
#: Keys per DeleteObjects request (the S3 limit).
DELETE_BATCH = 1000
_MISSING = {"404", "NoSuchKey", "NotFound"}
_LOG = logging.getLogger("carvault.store.s3")
_MULTIPART = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)


def parse_s3_setting(setting: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix without slashes); ValueError naming the setting when malformed."""
    rest = setting.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or not all(c.isalnum() or c in ".-" for c in bucket) or len(bucket) < 3:
        raise ValueError(f"blob_store must name a bucket as s3://bucket/prefix, got {setting!r}")
    if prefix:
        check_key_or_value_error(prefix, setting)
    return bucket, prefix


def check_key_or_value_error(prefix: str, setting: str) -> None:
    """A prefix must be a well-formed key (letters, digits, ``._=-`` parts)."""
    try:
        check_key(prefix)
    except ValueError:
        raise ValueError(f"blob_store prefix must be made of letters, digits and ._=- parts, got {setting!r}") from None


def _chunks(body: Any, chunk: int) -> Iterator[bytes]:
    """A GET's streaming body in chunks, closed at the end; a failure halfway is Unavailable."""
    with contextlib.closing(body):
        try:
            yield from body.iter_chunks(chunk)
        except (BotoCoreError, OSError) as e:
            raise Unavailable(f"object storage stopped sending a download: {type(e).__name__}") from None


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3BlobStore:
    """Blobs as objects of one bucket under one prefix."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str = "", region_name: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._warned = False  # the versioning warning is logged once per store
        config = Config(
            max_pool_connections=POOL_CONNECTIONS,
            # A group commit waits for its PUT: bounded, so a server that stops answering (not only one that
            # refuses) turns into a 503 for the cars within about a minute instead of holding the committer.
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=3,
            read_timeout=15,
            tcp_keepalive=True,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region_name or None, config=config
        )

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (for messages)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, e: Exception) -> Unavailable:
        detail = _code(e) if isinstance(e, ClientError) else type(e).__name__
        return Unavailable(f"object storage {self.url} could not {what}: {detail}: {e}")

    # ------------------------------------------------------------------ writing
    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
        """One PUT (atomic; acknowledged once stored, so ``durable`` needs nothing more)."""
        name = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(data))
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"store {key}", e) from None

    def put_file(self, key: str, path: Path) -> None:
        """Upload a (large) file as one object, in parts when big; the object appears whole or not at all."""
        name = self._key(key)
        try:
            self.client.upload_file(str(path), self.bucket, name, Config=_MULTIPART)
        except (BotoCoreError, ClientError, OSError) as e:  # boto3's S3UploadFailedError is a ClientError too
            raise self._fail(f"store {key}", e) from None

    # ------------------------------------------------------------------ reading
    def _get(self, key: str, **kw: Any) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key), **kw)["Body"].read())
        except ClientError as e:
            if _code(e) in _MISSING:
                raise BlobNotFound(f"no blob {key}") from None
            raise self._fail(f"read {key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"read {key}", e) from None

    def get(self, key: str) -> bytes:
        """The whole object."""
        return self._get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """One ranged GET."""
        if length <= 0:
            if not self.exists(key):
                raise BlobNotFound(f"no blob {key}")
            return b""
        try:
            data = self._get(key, Range=f"bytes={offset}-{offset + length - 1}")
        except Unavailable as e:
            raise Unavailable(f"blob {key} is shorter than asked ({offset}+{length}): {e.message}") from None
        if len(data) != length:
            raise Unavailable(f"blob {key} is shorter than asked ({offset}+{length})")
        return data

    def stream(self, key: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes in chunks (downloads of large files without holding them in memory)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as e:
            if _code(e) in _MISSING:
                raise BlobNotFound(f"no blob {key}") from None
            raise self._fail(f"read {key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"read {key}", e) from None
        return _chunks(body, chunk)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ClientError as e:
            if _code(e) in _MISSING:
                return None
            raise self._fail(f"look up {key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"look up {key}", e) from None

    def exists(self, key: str) -> bool:
        """A HEAD request."""
        return self._head(key) is not None

    def size(self, key: str) -> int:
        """The object's ContentLength."""
        head = self._head(key)
        if head is None:
            raise BlobNotFound(f"no blob {key}")
        return int(head["ContentLength"])

    def _objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key relative to this store, size) of every object under ``prefix``, page by page."""
        if prefix:
            check_key(prefix.rstrip("/") or "x")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        cut = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield obj["Key"][cut:], int(obj["Size"])
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"list {prefix or 'the store'}", e) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """ListObjectsV2 through its paginator."""
        for key, _size in self._objects(prefix):
            yield key

    # ------------------------------------------------------------------ deleting
    def delete(self, key: str) -> int:
        """HEAD for the size, then DELETE."""
        head = self._head(key)
        if head is None:
            return 0
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"delete {key}", e) from None
        return int(head["ContentLength"])

    def delete_prefix(self, prefix: str) -> int:
        """List, then DeleteObjects in batches of up to 1000 keys."""
        found = list(self._objects(prefix))
        freed = 0
        for i in range(0, len(found), DELETE_BATCH):
            batch = found[i : i + DELETE_BATCH]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._key(k)} for k, _ in batch], "Quiet": True},
                )
            except (BotoCoreError, ClientError) as e:
                raise self._fail(f"delete under {prefix}", e) from None
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise Unavailable(
                    f"object storage {self.url} refused to delete {len(answer['Errors'])} objects "
                    f"(first: {first.get('Key')}: {first.get('Code')})"
                )
            freed += sum(size for _, size in batch)
        return freed

    def update(self, key: str, change: Callable[[bytes], bytes | None], *, attempts: int = 8) -> bool:
        """Read-modify-write one object safely against other writers: ``change(old)`` gives the new value, or None
        to delete it; the PUT or DELETE is conditional on the object being unchanged (If-Match on its ETag) and
        is retried on a lost race. False when there was no object. Unavailable when the races never end."""
        name = self._key(key)
        for _ in range(attempts):
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=name)
                old, etag = bytes(got["Body"].read()), got["ETag"]
            except ClientError as e:
                if _code(e) in _MISSING:
                    return False
                raise self._fail(f"read {key}", e) from None
            except BotoCoreError as e:
                raise self._fail(f"read {key}", e) from None
            new = change(old)
            try:
                if new is None:
                    self.client.delete_object(Bucket=self.bucket, Key=name, IfMatch=etag)
                else:
                    self.client.put_object(Bucket=self.bucket, Key=name, Body=new, IfMatch=etag)
                return True
            except ClientError as e:
                if _code(e) in _MISSING:
                    return False
                if _code(e) in ("412", "PreconditionFailed", "409", "ConditionalRequestConflict"):
                    continue  # another writer changed it between our GET and PUT: read again
                raise self._fail(f"rewrite {key}", e) from None
            except BotoCoreError as e:
                raise self._fail(f"rewrite {key}", e) from None
        raise Unavailable(f"object {key} kept changing while it was rewritten; try again")

    # ------------------------------------------------------------------ the rest
    def local_path(self, key: str) -> Path | None:
        """None: objects are not files on this machine."""
        check_key(key)
        return None

    def check(self) -> None:
        """HEAD the bucket and read its versioning: Unavailable (naming what is wrong) unless it answers and keeps
        no old versions (``check_versioning``)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.check_versioning()
        except NoCredentialsError:
            raise Unavailable(
                f"no credentials for object storage {self.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or a profile or instance role)"
            ) from None
        except ClientError as e:
            code = _code(e)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise Unavailable(f"bucket {self.bucket!r} does not exist (setting blob_store={self.url})") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise Unavailable(
                    f"object storage refused this region's credentials for bucket {self.bucket!r} ({code})"
                ) from None
            raise self._fail("answer", e) from None
        except BotoCoreError as e:
            where = self.endpoint_url or "AWS"
            raise Unavailable(
                f"object storage at {where} does not answer (setting s3_endpoint_url): {type(e).__name__}: {e}"
            ) from None

    def check_versioning(self) -> None:
        """Refuse a bucket that keeps old versions of objects: erasure (deletion, retention) rewrites or deletes an
        object, and with versioning Enabled the erased bytes would stay as a noncurrent version. Suspended keeps the
        versions made while it was enabled: a warning in the log (once per store), not a refusal. A bucket whose
        versioning this region may not read (no s3:GetBucketVersioning) is also only a warning."""
        try:
            status = str(self.client.get_bucket_versioning(Bucket=self.bucket).get("Status", ""))
        except ClientError as e:
            if _code(e) in ("403", "AccessDenied", "405", "MethodNotAllowed", "501", "NotImplemented"):
                # Not allowed to read it, or an S3-compatible store without bucket versioning at all.
                self._warn_once(
                    f"cannot read the versioning setting of bucket {self.bucket!r} ({_code(e)}): make sure "
                    "versioning was never enabled on it, or erased data may survive as old versions"
                )
                return
            raise
        if status == "Enabled":
            raise Unavailable(
                f"bucket {self.bucket!r} has versioning Enabled (setting blob_store={self.url}): erased data would "
                "survive as old object versions. Use a bucket on which versioning was never enabled "
                "(versioning cannot be switched off once enabled, only Suspended)"
            )
        if status == "Suspended":
            self._warn_once(
                f"bucket {self.bucket!r} has versioning Suspended: object versions made while it was enabled may "
                "still hold erased data. Delete the noncurrent versions (or expire them with a lifecycle rule "
                "NoncurrentVersionExpiration), or move the region to a bucket that never had versioning"
            )

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            _LOG.warning("%s", message)

    def close(self) -> None:
        """Close the client's connections."""
        with contextlib.suppress(Exception):
            self.client.close()


def open_s3_store(setting: str, *, endpoint_url: str = "", region_name: str = "") -> S3BlobStore:
    """The store named by ``s3://bucket/prefix``, checked: ValueError with one readable reason when it cannot work."""
    bucket, prefix = parse_s3_setting(setting)
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        raise ValueError(f"s3_endpoint_url must be an http(s) URL, got {endpoint_url!r}")
    store = S3BlobStore(bucket, prefix, endpoint_url=endpoint_url, region_name=region_name)
    try:
        store.check()
    except Unavailable as e:
        store.close()
        raise ValueError(f"blob_store {setting}: {e.message}") from None
    return store
