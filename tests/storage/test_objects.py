"""ObjectStore on a local folder, in memory, and on a real S3 server (moto) over loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import s3fs

from modelship.core.errors import ServiceUnavailable
from storage.objects import ObjectNotFound, ObjectStore

KEY = re.compile(r"acme/42/[0-9a-f]{32}\.jpg")


async def test_local_round_trip_is_atomic(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "objects"))  # created on demand
    key = ObjectStore.new_key("acme", "42", ".JPG")
    assert KEY.fullmatch(key)

    await store.put(key, b"first")
    await store.put(key, b"second")
    assert await store.get(key) == b"second"
    assert (tmp_path / "objects" / key).read_bytes() == b"second"
    assert [p.name for p in (tmp_path / "objects" / key).parent.iterdir()] == [key.split("/")[-1]]

    await store.delete(key)
    with pytest.raises(ObjectNotFound):
        await store.get(key)
    await store.delete(key)  # deleting twice is fine


async def test_file_url_and_memory(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path}/objects", "memory://modelship-test"):
        store = ObjectStore(url)
        await store.ping()
        key = ObjectStore.new_key("acme", "42", ".txt")
        await store.put(key, b"text")
        assert await store.get(key) == b"text"
        await store.delete(key)


async def test_missing_key_is_object_not_found(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    with pytest.raises(ObjectNotFound) as raised:
        await store.get(ObjectStore.new_key("acme", "42", ".png"))
    assert isinstance(raised.value, KeyError)


@pytest.mark.parametrize(
    "key",
    [
        "../secret",
        "acme/42/../../../etc/passwd",
        f"acme/../{'0' * 32}.jpg",
        f"/acme/42/{'0' * 32}.jpg",
        "acme/42/photo.jpg",  # a user's file name
        f"acme/42/{'0' * 32}.jpg/x",
        "",
    ],
)
async def test_only_generated_keys_are_accepted(tmp_path: Path, key: str) -> None:
    store = ObjectStore(str(tmp_path))
    with pytest.raises(ValueError, match="object key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="object key"):
        await store.get(key)
    with pytest.raises(ValueError, match="object key"):
        await store.delete(key)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("extension", "expected"),
    [
        (".jpg", ".jpg"),
        (".JPEG", ".jpeg"),
        (".mp4", ".mp4"),
        ("jpg", ".bin"),
        ("", ".bin"),
        (".tar.gz", ".bin"),
        (".abcdefghi", ".bin"),
        ("./../x", ".bin"),
        (".jp g", ".bin"),
    ],
)
def test_new_key_extension(extension: str, expected: str) -> None:
    key = ObjectStore.new_key("acme", "42", extension)
    assert key.startswith("acme/42/")
    assert key.endswith(expected)
    assert key != ObjectStore.new_key("acme", "42", extension)


@pytest.mark.parametrize(
    ("tenant", "project"), [("..", "1"), ("a/b", "1"), (".hidden", "1"), ("acme", ""), ("", "1")]
)
def test_new_key_refuses_unsafe_segments(tenant: str, project: str) -> None:
    with pytest.raises(ValueError, match="cannot be part of an object key"):
        ObjectStore.new_key(tenant, project, ".jpg")


async def test_ping_fails_when_the_folder_is_gone(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "objects"))
    await store.ping()
    (tmp_path / "objects").rmdir()
    with pytest.raises(ServiceUnavailable):
        await store.ping()


async def test_a_folder_gone_is_an_outage_not_a_missing_file(tmp_path: Path) -> None:
    """A volume not mounted is a 503 (a job gives its batch back), not a missing file (which
    fails a job's item for good)."""
    store = ObjectStore(str(tmp_path / "objects"))
    key = ObjectStore.new_key("acme", "42", ".jpg")
    await store.put(key, b"bytes")
    shutil.rmtree(tmp_path / "objects")
    with pytest.raises(ServiceUnavailable) as raised:
        await store.get(key)
    assert str(tmp_path) not in raised.value.message  # clients see it; the log has where
    with pytest.raises(ServiceUnavailable):
        await store.size(key)
    with pytest.raises(ServiceUnavailable):
        await anext(aiter(store.read_chunks(key)))


async def test_s3_round_trip(s3_options: dict[str, Any]) -> None:
    store = ObjectStore("s3://labels/uploads", s3_options)
    await store.ping()
    key = ObjectStore.new_key("acme", "42", ".jpg")

    await store.put(key, b"\xff\xd8 jpeg bytes")
    assert await store.get(key) == b"\xff\xd8 jpeg bytes"
    listed = s3fs.S3FileSystem(**s3_options).ls("labels/uploads/acme/42", refresh=True)
    assert listed == [f"labels/uploads/{key}"]

    await store.delete(key)
    with pytest.raises(ObjectNotFound):
        await store.get(key)


async def test_s3_missing_bucket_fails_ping(s3_options: dict[str, Any]) -> None:
    with pytest.raises(ServiceUnavailable):
        await ObjectStore("s3://no-such-bucket/x", s3_options).ping()


async def test_s3_missing_bucket_is_an_outage_not_a_missing_file(
    s3_options: dict[str, Any],
) -> None:
    store = ObjectStore("s3://no-such-bucket/x", s3_options)
    key = ObjectStore.new_key("acme", "42", ".jpg")
    with pytest.raises(ServiceUnavailable):
        await store.put(key, b"bytes")
    with pytest.raises(ServiceUnavailable):
        await store.get(key)
    with pytest.raises(ObjectNotFound):  # the bucket is there, the object is not
        await ObjectStore("s3://labels/x", s3_options).get(key)


async def test_gcs_round_trip_and_a_missing_bucket(
    gcs_options: dict[str, Any], tmp_path: Path
) -> None:
    """gs:// through gcsfs, against a GCS JSON API server: small objects whole, large ones
    streamed both ways; a bucket that is not there is an outage, an object a miss."""
    store = ObjectStore("gs://labels/uploads", gcs_options)
    await store.ping()
    key = ObjectStore.new_key("acme", "42", ".jpg")
    await store.put(key, b"\xff\xd8 jpeg bytes")
    assert await store.get(key) == b"\xff\xd8 jpeg bytes"

    big = os.urandom(3 << 20)
    source = tmp_path / "big.bin"
    source.write_bytes(big)
    big_key = ObjectStore.new_key("acme", "42", ".bin")
    await store.put_file(big_key, source)
    assert await store.size(big_key) == len(big)
    assert b"".join([c async for c in store.read_chunks(big_key, chunk_bytes=1 << 20)]) == big

    await store.delete(key)
    with pytest.raises(ObjectNotFound):
        await store.get(key)
    missing = ObjectStore("gs://no-such-bucket/x", gcs_options)
    with pytest.raises(ServiceUnavailable):
        await missing.ping()
    with pytest.raises(ServiceUnavailable):
        await missing.get(key)


async def test_s3_that_never_answers_is_an_outage_within_seconds() -> None:
    """An endpoint that takes connections and never answers: two tries of one read timeout
    (2 s here), not s3fs's 5 tries of botocore's 5 (~50 s here, ~400 s by default)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the backlog; nothing ever answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        options = {
            "endpoint_url": endpoint,
            "key": "testing",
            "secret": "testing",
            "config_kwargs": {"read_timeout": 2},
        }
        store = ObjectStore("s3://labels/x", options)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await store.get(ObjectStore.new_key("acme", "42", ".jpg"))
        assert time.monotonic() - started < 10
