"""The media blob store (issue #11): the local directory and an S3-compatible bucket (moto's server,
started here on a free port), with the same behaviour: content-addressed, idempotent, streamed,
listed by age for the cleanup."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.embedded import free_port
from storage.blobs import BlobMissing, BlobStore, LocalBlobStore, S3BlobStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "media")
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    client = _s3_client(endpoint)
    bucket = f"b{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3BlobStore(bucket, prefix="media/", client=client)


async def test_blobs_are_content_addressed_streamed_and_deleted(store: BlobStore) -> None:
    data = os.urandom(700_000)
    sha = await store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert await store.put(data) == sha  # the same bytes: one blob
    assert await store.get(sha) == data and await store.size(sha) == len(data)
    assert b"".join([chunk async for chunk in store.stream(sha)]) == data
    assert [s for s, _ in await store.older_than(0)] == [sha]
    assert await store.older_than(3600) == []  # just written
    assert await store.delete(sha) is True and await store.delete(sha) is False
    assert await store.size(sha) is None
    with pytest.raises(BlobMissing):
        await store.get(sha)
    with pytest.raises(BlobMissing):
        await anext(store.stream(sha))
    with pytest.raises(ValueError, match="sha256"):
        await store.get("../../etc/passwd")


async def test_local_blobs_are_private_files_in_private_directories(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "media")
    sha = await store.put(b"a customer's photo")
    path = tmp_path / "media" / sha[:2] / sha
    assert path.read_bytes() == b"a customer's photo"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "media").stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [sha]  # no temporary file left behind
    old = time.time() - 7200
    os.utime(path, (old, old))
    assert [s for s, _ in await store.older_than(3600)] == [sha]
    await store.put(b"a customer's photo")  # stored again: written now, so not old any more
    assert await store.older_than(3600) == []
