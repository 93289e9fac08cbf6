"""The first pass of a batch job, as Ray Data tasks: entries read into items, images
stored in object storage (under content keys, so a rerun writes nothing new). An image
the store cannot take (an outage) is an item that fails at once with that reason."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any
from uuid import UUID

import pyarrow as pa

from modelship.core.errors import ServiceUnavailable
from modelship.core.settings import Settings
from modelship.service.datasets import Entry, read_entry
from storage.batch import BatchItem
from storage.objects import ObjectNotFound, ObjectStore

_PUT_CONCURRENCY = 8
_TEXT_ROWS = 4096  # texts read before they leave a read task
_TYPES = {"byte_size": pa.int64(), "width": pa.int32(), "height": pa.int32()}
SCHEMA = pa.schema([(f.name, _TYPES.get(f.name, pa.string())) for f in fields(BatchItem)])


def read_batch(
    batch: dict[str, Any],
    images: bool,
    settings: Settings,
    tenant: str,
    project_id: str,
    objects_url: str,
) -> Iterator[pa.Table]:
    """``map_batches`` function: a batch of entries (columns ``uri``, ``text``, ``error``)
    in, their items out (columns of ``BatchItem``), images written to the object store.
    Texts leave as each file is read (a text file may hold millions): a batch holds one
    file's texts, not all of its files'."""
    rows: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    for uri, text, error in zip(batch["uri"], batch["text"], batch["error"], strict=True):
        entry = Entry(uri=str(uri), text=str(text), error=str(error))
        for item, data in read_entry(entry, images, settings, tenant, UUID(project_id)):
            rows.append(asdict(item))
            if data is not None and item.object_key is not None:
                files[item.object_key] = data
        if not images and len(rows) >= _TEXT_ROWS:
            yield pa.Table.from_pylist(rows, schema=SCHEMA)
            rows = []
    if files:
        store = ObjectStore(objects_url, settings.object_store_options)
        unstored = asyncio.run(_store(store, files))
        for row in rows:  # fails at once, keeping its key: a rerun stores it there
            if (error := unstored.get(row["object_key"])) is not None:
                row["error"] = error
    if rows:
        yield pa.Table.from_pylist(rows, schema=SCHEMA)


async def _store(store: ObjectStore, files: dict[str, bytes]) -> dict[str, str]:
    """Write each file unless its key holds it already (a key is its content's hash);
    returns the keys the store could not take (an outage), with the reason."""
    limit = asyncio.Semaphore(_PUT_CONCURRENCY)
    unstored: dict[str, str] = {}

    async def put(key: str, data: bytes) -> None:
        async with limit:
            try:
                try:
                    if await store.size(key) == len(data):
                        return
                except ObjectNotFound:
                    pass
                await store.put(key, data)
            except ServiceUnavailable as exc:
                unstored[key] = f"{exc.code}: {exc.message}"

    await asyncio.gather(*(put(key, data) for key, data in files.items()))
    return unstored
