"""Exports written at once by two writers (two Exporter replicas, or one replica's two
tasks), on the real PostgreSQL: each case forces the interleaving it was found wrong in."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from modelship.core.records import ExportCreate, Project
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.exporter import DOWNLOAD_GRACE, delete_expired, run_export
from modelship.service.labeling import LocalLabeler
from modelship.service.workflow import Workflow
from storage.catalog import Catalog, NewItem
from storage.exports import ExportStore
from storage.services import Services
from tests.conftest import PACKAGED_MODELS
from tests.unit.flow import LABELS, assert_error, make_project, upload_texts

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _label(services: Services, project: Project, item_id: uuid.UUID, status: str) -> None:
    """The item's annotation, as a job (a detection of ``FACE``) and a person left it."""
    value = [{"label": "FACE", "score": 0.9, "box": [1, 1, 4, 4]}]
    async with services.db.connection() as conn:
        prediction = await conn.fetchval(
            "INSERT INTO predictions (item_id, model, model_version, params_hash, output)"
            " VALUES ($1, 'nudenet', 'v1', 'p', $2) RETURNING id",
            item_id,
            value,
        )
        await conn.execute(
            "INSERT INTO annotations (item_id, project_id, prediction_id, status, value,"
            " top_label, score, uncertainty, updated_by) VALUES ($1, $2, $3, $4, $5, 'FACE',"
            " 0.9, 0.1, 'model')",
            item_id,
            project.id,
            prediction,
            status,
            value,
        )


async def _relabel(services: Services, item_id: uuid.UUID, label: str) -> None:
    async with services.db.connection() as conn:
        await conn.execute(
            "UPDATE annotations SET value = $2, top_label = $3 WHERE item_id = $1",
            item_id,
            [{"label": label, "score": 0.9, "box": [1, 1, 4, 4]}],
            label,
        )


async def test_exports_meeting_new_labels_at_once_keep_the_projects_ids(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports read the category order, then labels new to it were set (a person's
    corrections): the approved-only export met "travel", the other met "music" then
    "travel". Each appended what it met to the project's order when done: the first made
    travel id 2, and the second's file, written with music 2 and travel 3, was kept,
    its ids meaning other labels than in every later export."""
    body = {"task": "object-detection", "model": "nudenet", "labels": [{"name": "FACE"}]}
    project = await Catalog(services.db).project(
        "default", uuid.UUID((await make_project(client, **body))["id"])
    )
    new = [  # no file: the exports leave images out
        NewItem(uuid.uuid4().hex, "image/png", 10, 8, 8, f"default/{project.id}/{n}.png")
        for n in range(2)
    ]
    created, _ = await Catalog(services.db).add_items("default", project.id, new, "test")
    low, high = sorted(item.id for item in created)  # rows are written in item id order
    await _label(services, project, low, "pending")
    await _label(services, project, high, "corrected")

    real_categories, real_extend = ExportStore.categories, ExportStore.extend_categories
    read: list[str] = []
    relabeled, first_done = asyncio.Event(), asyncio.Event()

    async def categories(self: ExportStore, project_: Project) -> list[str]:
        order = await real_categories(self, project_)
        read.append("read")
        if len(read) == 2:  # both writers hold the order: the labels change now
            await _relabel(services, low, "music")
            await _relabel(services, high, "travel")
            relabeled.set()
        await relabeled.wait()
        return order

    async def extend(self: ExportStore, project_id: uuid.UUID, names: list[str]) -> list[str]:
        if "music" in names:  # the second writer's: after the first one's
            await first_done.wait()
        order = await real_extend(self, project_id, names)
        if "travel" in names and "music" not in names:
            first_done.set()
        return order

    monkeypatch.setattr(ExportStore, "categories", categories)
    monkeypatch.setattr(ExportStore, "extend_categories", extend)
    store = ExportStore(services.db)
    exports = [
        await store.create("default", project, ExportCreate(format="coco", selection=s), "t")
        for s in ("approved", "all")
    ]
    await asyncio.wait_for(
        asyncio.gather(*(run_export(services, e.id, timedelta(hours=1)) for e in exports)), 60
    )

    order = await real_extend(store, project.id, [])
    assert order == ["FACE", "travel", "music"]
    for export in exports:
        done, key = await store.get("default", export.id)
        assert done.status == "succeeded" and key is not None, done
        coco: dict[str, Any] = json.loads(await services.objects.get(key))
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for annotation in coco["annotations"]:  # id n means the order's n-th label
            assert names[annotation["category_id"]] == order[annotation["category_id"] - 1]


async def test_a_download_the_expiry_sweep_overtakes_is_gone_not_an_error(
    services: Services, job_settings: Settings, local: LocalLabeler
) -> None:
    """The Ingress read the export (succeeded, not yet expired), then an Exporter replica's
    sweep expired it and deleted its file before the Ingress opened it: the download
    answered 500 internal_error (the store's ObjectNotFound), not 410 export_expired. (The
    sweep now waits DOWNLOAD_GRACE past expiry: the Ingress would have to stall that long.)"""
    workflow = Workflow(services, PACKAGED_MODELS, job_settings)
    app = create_api(local, local.configs, job_settings, workflow=workflow)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        project = await make_project(
            client, task="zero-shot-text-classification", model="minilm", labels=LABELS
        )
        await upload_texts(client, project, ["a late goal"])
        stored = await Catalog(services.db).project("default", uuid.UUID(project["id"]))
        spec = ExportCreate(format="jsonl", selection="all")
        export = await ExportStore(services.db).create("default", stored, spec, "test")
        await run_export(services, export.id, timedelta(hours=1))
        read = workflow.export_file

        async def read_then_swept(tenant: str, export_id: uuid.UUID) -> tuple[Any, str]:
            found = await read(tenant, export_id)
            async with services.db.connection() as conn:  # the sweep's time comes
                await conn.execute(
                    "UPDATE exports SET expires_at = now() - $2::interval WHERE id = $1",
                    export_id,
                    DOWNLOAD_GRACE,
                )
            assert await delete_expired(services) >= 1
            return found

        workflow.export_file = read_then_swept  # type: ignore[method-assign]
        response = await client.get(f"/api/v1/exports/{export.id}/download")
    assert_error(response, 410, "export_expired")
