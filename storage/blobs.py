"""Where media bytes live (issue #11): content-addressed by sha256, in a directory or an S3 bucket.

``MEDIA_STORE=local`` (default): ``MEDIA_DIR`` (default ``DATA_DIR/media``), one file per content at
``ab/abcdef…`` (the sha256 in hex, its first two characters as a directory), files 0600 in 0700
directories, written to a temporary name, fsynced and renamed, so a reader never sees half a file.
Every process that reads or writes media (the API stores sends and serves media, the connector
reads sends and stores downloads, the worker's cleanup deletes) must see the same directory: with
processes on several hosts use a shared mount or the S3 store.

``MEDIA_STORE=s3``: an S3-compatible bucket (AWS, MinIO, Ceph, …) through boto3 (the ``[s3]``
extra), objects ``MEDIA_S3_PREFIX`` + sha256; credentials from the usual ``AWS_*`` variables or
the instance's role. boto3 is synchronous: each call runs in a thread.

The same bytes stored twice are one blob; rows of ``media`` (storage/media.py) refer to blobs, and
the cleanup deletes a blob once no row refers to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from domain.settings import Settings

_SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK = 256 * 1024


class BlobMissing(LookupError):
    """No blob with this sha256 in the store."""


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 in hex: {sha256[:80]!r}")
    return sha256


class BlobStore(Protocol):
    where: str  # for logs and /health: the directory or bucket, never a credential

    async def put(self, data: bytes) -> str:
        """Store ``data``; return its sha256 (idempotent: the same bytes are stored once)."""
        ...

    async def get(self, sha256: str) -> bytes:
        """The bytes; raises :class:`BlobMissing`."""
        ...

    def stream(self, sha256: str) -> AsyncIterator[bytes]:
        """The bytes in chunks (for serving); raises :class:`BlobMissing` at the first chunk."""
        ...

    async def size(self, sha256: str) -> int | None:
        """Its size, or None when it is not there."""
        ...

    async def delete(self, sha256: str) -> bool:
        ...

    async def older_than(self, age_s: float) -> list[tuple[str, int]]:
        """(sha256, size) of every blob written more than ``age_s`` ago (the cleanup's orphan sweep)."""
        ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, sha256: str) -> Path:
        sha256 = _check(sha256)
        return self.root / sha256[:2] / sha256

    async def put(self, data: bytes) -> str:
        sha256 = blob_key(data)
        await asyncio.to_thread(self._write, self._path(sha256), data)
        return sha256

    def _write(self, path: Path, data: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == len(data):
                os.utime(path)  # content-addressed: the same bytes; written again now (the cleanup's grace)
                return
        for directory in (self.root, path.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # created 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def get(self, sha256: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(sha256).read_bytes)
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    async def stream(self, sha256: str) -> AsyncIterator[bytes]:
        try:
            fh = await asyncio.to_thread(open, self._path(sha256), "rb")
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
        finally:
            fh.close()

    async def size(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(self._path(sha256).stat)).st_size
        except FileNotFoundError:
            return None

    async def delete(self, sha256: str) -> bool:
        try:
            await asyncio.to_thread(self._path(sha256).unlink)
            return True
        except FileNotFoundError:
            return False

    async def older_than(self, age_s: float) -> list[tuple[str, int]]:
        return await asyncio.to_thread(self._scan, time.time() - age_s)

    def _scan(self, before: float) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        if not self.root.is_dir():
            return out
        for directory in self.root.iterdir():
            if not directory.is_dir() or len(directory.name) != 2:
                continue
            for path in directory.iterdir():
                if _SHA256.fullmatch(path.name):
                    with contextlib.suppress(FileNotFoundError):
                        st = path.stat()
                        if st.st_mtime < before:
                            out.append((path.name, st.st_size))
        return out


class S3BlobStore:
    def __init__(self, bucket: str, *, prefix: str = "media/", endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError:
                raise RuntimeError("MEDIA_STORE=s3 needs boto3: pip install 'waorch[s3]'") from None
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self._s3 = client
        self.bucket = bucket
        self.prefix = prefix
        self.where = f"s3://{bucket}/{prefix}"

    def _key(self, sha256: str) -> str:
        return self.prefix + _check(sha256)

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    async def put(self, data: bytes) -> str:
        sha256 = blob_key(data)
        key = self._key(sha256)
        # Put again when it exists: its LastModified is then now (the cleanup's grace).
        await asyncio.to_thread(self._s3.put_object, Bucket=self.bucket, Key=key, Body=data,
                                ChecksumAlgorithm="SHA256")
        return sha256

    async def _object(self, sha256: str) -> Any:
        try:
            return await asyncio.to_thread(self._s3.get_object, Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if self._missing(exc):
                raise BlobMissing(sha256) from None
            raise

    async def get(self, sha256: str) -> bytes:
        obj = await self._object(sha256)
        body = obj["Body"]
        try:
            data: bytes = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return data

    async def stream(self, sha256: str) -> AsyncIterator[bytes]:
        obj = await self._object(sha256)
        body = obj["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def size(self, sha256: str) -> int | None:
        try:
            head = await asyncio.to_thread(self._s3.head_object, Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if self._missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    async def delete(self, sha256: str) -> bool:
        if await self.size(sha256) is None:
            return False
        await asyncio.to_thread(self._s3.delete_object, Bucket=self.bucket, Key=self._key(sha256))
        return True

    async def older_than(self, age_s: float) -> list[tuple[str, int]]:
        return await asyncio.to_thread(self._list, time.time() - age_s)

    def _list(self, before: float) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix):]
                if _SHA256.fullmatch(name) and item["LastModified"].timestamp() < before:
                    out.append((name, int(item["Size"])))
        return out


def blob_store(settings: Settings) -> BlobStore:
    """The store the settings name (one per process)."""
    if settings.media_store == "s3":
        assert settings.media_s3_bucket  # Settings refuses s3 without a bucket
        return S3BlobStore(settings.media_s3_bucket, prefix=settings.media_s3_prefix,
                           endpoint_url=settings.media_s3_endpoint_url, region=settings.media_s3_region)
    return LocalBlobStore(settings.resolved_media_dir)
