"""Exports through the API, loaded back with the tools users load them with."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pycocotools.coco import COCO

from modelship.core.records import ExportCreate, ExportFormat, ExportSelection
from modelship.service.exporter import DOWNLOAD_GRACE, delete_expired, run_export
from modelship.service.runner import JobRunner
from storage.catalog import Catalog, NewItem
from storage.exports import ExportStore
from storage.objects import ObjectNotFound
from storage.services import Services
from tests.conftest import payload
from tests.unit.exports.samples import ArchiveReader
from tests.unit.flow import (
    LABELS,
    assert_error,
    drain,
    make_project,
    png,
    text_project,
    upload_texts,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

FACES = [{"name": "FACE_FEMALE"}, {"name": "FACE_MALE"}]


async def _export(client: httpx.AsyncClient, project: dict[str, Any], **body: Any) -> bytes:
    response = await client.post(f"/api/v1/projects/{project['id']}/exports", json=body)
    assert response.status_code == 202, response.text
    export = response.json()
    for _ in range(200):
        export = (await client.get(f"/api/v1/exports/{export['id']}")).json()
        if export["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    assert export["status"] == "succeeded", export
    download = await client.get(export["download_url"])
    assert download.status_code == 200
    assert download.headers["content-type"].startswith(export["media_type"])
    assert len(download.content) == export["bytes"]
    return download.content


async def _detection_project(
    client: httpx.AsyncClient, runner: JobRunner
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    project = await make_project(
        client, task="object-detection", model="nudenet", labels=FACES, confidence_threshold=0.3
    )
    files = [
        ("file", ("astronaut.jpg", payload("astronaut.jpg"))),
        ("file", ("blank.png", png(7, (640, 480)))),  # nothing to find: still exported
        ("file", ("small.png", png(8, (37, 91)))),
    ]
    upload = await client.post(f"/api/v1/projects/{project['id']}/items", files=files)
    items = {item["filename"]: item for item in upload.json()["items"]}
    await client.post(f"/api/v1/projects/{project['id']}/jobs")
    await drain(runner)
    for item in items.values():
        detail = await client.get(f"/api/v1/projects/{project['id']}/items/{item['id']}")
        item["boxes"] = detail.json()["annotation"]["value"]
    assert items["astronaut.jpg"]["boxes"], "the model should find the astronaut's face"
    return project, items


async def test_coco_yolo_and_voc_hold_every_image_with_its_real_size(
    client: httpx.AsyncClient, runner: JobRunner, tmp_path: Path
) -> None:
    project, items = await _detection_project(client, runner)

    coco_path = tmp_path / "coco.json"
    coco_path.write_bytes(await _export(client, project, format="coco", selection="all"))
    coco = COCO(str(coco_path))
    assert len(coco.getImgIds()) == 3
    by_item = {image["modelship_item_id"]: image for image in coco.loadImgs(coco.getImgIds())}
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert list(categories.values())[:2] == ["FACE_FEMALE", "FACE_MALE"]
    for item in items.values():
        image = by_item[item["id"]]
        assert (image["width"], image["height"]) == (item["width"], item["height"])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        got = sorted((categories[a["category_id"]], a["bbox"]) for a in annotations)
        expected = sorted((b["label"], b["box"]) for b in item["boxes"])
        assert [label for label, _ in got] == [label for label, _ in expected]
        for (_, bbox), (_, box) in zip(got, expected, strict=True):
            assert bbox == pytest.approx(box)

    archive = ArchiveReader(await _export(client, project, format="yolo", selection="all"))
    names = yaml.safe_load(archive.read("data.yaml"))["names"]
    for item in items.values():
        lines = archive.read(f"labels/{item['id']}.txt").decode().split()
        rows = [lines[i : i + 5] for i in range(0, len(lines), 5)]
        assert len(rows) == len(item["boxes"])  # an empty file for an image without boxes
        for row, box in zip(
            sorted(rows), sorted(item["boxes"], key=lambda b: b["label"]), strict=False
        ):
            cx, _, w, h = (float(v) for v in row[1:])
            x, y, bw, bh = box["box"]
            assert names[int(row[0])] == box["label"]
            assert (cx - w / 2) * item["width"] == pytest.approx(max(x, 0), abs=0.01)
            assert w * item["width"] == pytest.approx(min(bw, item["width"] - x), abs=0.01)
            assert h * item["height"] == pytest.approx(min(bh, item["height"] - y), abs=0.01)

    voc = ArchiveReader(await _export(client, project, format="voc", selection="all"))
    for item in items.values():
        root = ET.fromstring(voc.read(f"Annotations/{item['id']}.xml"))
        assert int(root.findtext("size/width") or 0) == item["width"]
        assert len(root.findall("object")) == len(item["boxes"])


async def test_a_label_first_used_later_is_appended_to_the_categories(
    client: httpx.AsyncClient, runner: JobRunner, tmp_path: Path
) -> None:
    """Without a label list, ids came from every used label sorted: a new label ("BIRD",
    which sorts first) moved every id after it, and YOLO's class 0 changed meaning."""
    project = await make_project(
        client, task="object-detection", model="nudenet", confidence_threshold=0.3
    )
    files = [
        ("file", ("astronaut.jpg", payload("astronaut.jpg"))),
        ("file", ("blank.png", png(9, (640, 480)))),
    ]
    upload = await client.post(f"/api/v1/projects/{project['id']}/items", files=files)
    blank = next(i for i in upload.json()["items"] if i["filename"] == "blank.png")
    await client.post(f"/api/v1/projects/{project['id']}/jobs")
    await drain(runner)

    async def yolo() -> tuple[ArchiveReader, list[str]]:
        archive = ArchiveReader(await _export(client, project, format="yolo", selection="all"))
        return archive, yaml.safe_load(archive.read("data.yaml"))["names"]

    _, first = await yolo()
    assert first and "BIRD" < min(first)
    correction = {"action": "correct", "detections": [{"label": "BIRD", "box": [1, 2, 30, 40]}]}
    reviewed = await client.post(
        f"/api/v1/projects/{project['id']}/items/{blank['id']}/review", json=correction
    )
    assert reviewed.status_code == 200, reviewed.text
    archive, names = await yolo()
    assert names == [*first, "BIRD"]
    assert archive.read(f"labels/{blank['id']}.txt").split()[0] == str(len(first)).encode()

    coco_path = tmp_path / "coco.json"
    coco_path.write_bytes(await _export(client, project, format="coco", selection="all"))
    coco = COCO(str(coco_path))
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == names


async def test_reordering_the_label_list_moves_no_id(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    import datasets

    project = await text_project(client)  # sport, cooking
    await upload_texts(client, project, ["a late goal"])

    async def class_names(name: str) -> list[str]:
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(await _export(client, project, format="hf", selection="all"))
        dataset = datasets.load_dataset(
            "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / name)
        )
        names: list[str] = dataset.features["label"].names
        return names

    assert await class_names("first") == ["sport", "cooking"]
    music = {"name": "music", "examples": ["a song on the radio"]}
    changed = await client.patch(
        f"/api/v1/projects/{project['id']}", json={"labels": [music, *reversed(LABELS)]}
    )
    assert changed.status_code == 200, changed.text
    assert await class_names("second") == ["sport", "cooking", "music"]


async def test_exports_that_start_at_once_agree_on_every_id(
    client: httpx.AsyncClient, services: Services
) -> None:
    project = uuid.UUID((await text_project(client))["id"])
    store = ExportStore(services.db)
    names = [f"label-{n}" for n in range(8)]
    orders = await asyncio.gather(*(store.extend_categories(project, [n]) for n in names))
    final = await store.extend_categories(project, [])
    assert sorted(final) == names  # no update lost
    for order in orders:  # each saw a prefix of the final order: the same ids
        assert final[: len(order)] == order
    assert await store.extend_categories(project, ["label-3", "new"]) == [*final, "new"]


async def test_archived_images_have_the_size_the_api_reports(client: httpx.AsyncClient) -> None:
    """Opened as torchvision opens them (no EXIF applied), and GIFs as PNGs for YOLO."""
    from PIL import Image

    project = await make_project(client, task="object-detection", model="nudenet")
    gif = io.BytesIO()
    Image.new("RGB", (50, 40), (9, 200, 9)).save(gif, format="GIF")
    files = [
        ("file", ("cat.jpg", payload("cat_exif_rotated.jpg"))),
        ("file", ("green.gif", gif.getvalue())),
    ]
    upload = await client.post(f"/api/v1/projects/{project['id']}/items", files=files)
    items = {item["filename"]: item for item in upload.json()["items"]}
    assert (items["cat.jpg"]["width"], items["cat.jpg"]["height"]) == (451, 300)
    for format, folder in (("coco", "images"), ("yolo", "images"), ("voc", "JPEGImages")):
        body = {"format": format, "selection": "all", "include_images": True}
        archive = ArchiveReader(await _export(client, project, **body))
        shipped = {n.split("/")[1]: n for n in archive.namelist() if n.startswith(folder + "/")}
        for item in items.values():
            ext = ".png" if format == "yolo" and item["filename"] == "green.gif" else None
            name = item["id"] + (ext or "." + item["filename"].split(".")[1])
            with Image.open(io.BytesIO(archive.read(shipped[name]))) as image:
                assert image.size == (item["width"], item["height"]), (format, name)


async def test_an_image_item_without_a_readable_file_is_left_out_of_image_formats(
    client: httpx.AsyncClient, runner: JobRunner, services: Services
) -> None:
    """A batch job records an entry it could not read as an item with no size or file."""
    project, items = await _detection_project(client, runner)
    unread = NewItem(content_hash="unreadable-entry", media_type="image/jpeg", byte_size=0, text="")
    await Catalog(services.db).add_items("default", uuid.UUID(project["id"]), [unread], "test")
    coco = json.loads(await _export(client, project, format="coco", selection="all"))
    assert len(coco["images"]) == len(items)


async def test_reviewed_text_labels_export_to_csv_jsonl_and_a_hugging_face_dataset(
    client: httpx.AsyncClient, runner: JobRunner, tmp_path: Path
) -> None:
    project = await make_project(
        client,
        task="zero-shot-text-classification",
        model="minilm",
        labels=LABELS,
        auto_approve_threshold=1.0,  # every prediction waits for a person
    )
    texts = ["we won the final", '=HYPERLINK("http://x")', "stir the sauce", "@SUM(A1) goal"]
    ids = dict(zip(texts, await upload_texts(client, project, texts), strict=True))
    await client.post(f"/api/v1/projects/{project['id']}/jobs")
    await drain(runner)
    (late,) = await upload_texts(client, project, ["uploaded after the job"])
    base = f"/api/v1/projects/{project['id']}/items"
    await client.post(f"{base}/{ids['we won the final']}/review", json={"action": "approve"})
    corrected = ids['=HYPERLINK("http://x")']
    await client.post(
        f"{base}/{corrected}/review", json={"action": "correct", "labels": ["cooking"]}
    )
    await client.post(f"{base}/{ids['stir the sauce']}/review", json={"action": "reject"})

    approved = list(
        csv.DictReader(io.StringIO((await _export(client, project, format="csv")).decode()))
    )
    assert {row["item_id"] for row in approved} == {ids["we won the final"], corrected}
    cells = {row["item_id"]: row for row in approved}
    assert cells[corrected]["label"] == "cooking" and cells[corrected]["status"] == "corrected"
    assert cells[corrected]["text"].startswith("'=")  # inert in a spreadsheet

    everything = [
        json.loads(line)
        for line in (await _export(client, project, format="jsonl", selection="all")).splitlines()
    ]
    assert len(everything) == 5
    statuses = {row["item_id"]: row["status"] for row in everything}
    assert statuses[late] == "unlabeled" and statuses[ids["stir the sauce"]] == "rejected"

    import datasets

    path = tmp_path / "labels.parquet"
    path.write_bytes(await _export(client, project, format="hf", selection="all"))
    dataset = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert dataset.num_rows == 5
    assert dataset.features["label"].names == ["sport", "cooking"]
    decoded = {
        row["item_id"]: dataset.features["label"].int2str(row["label"])
        if row["label"] >= 0
        else None
        for row in dataset
    }
    assert decoded[corrected] == "cooking" and decoded[late] is None


async def test_bad_export_requests(client: httpx.AsyncClient) -> None:
    project = await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )
    url = f"/api/v1/projects/{project['id']}/exports"
    assert_error(await client.post(url, json={"format": "yolo"}), 422, "unsupported_export")
    assert_error(
        await client.post(url, json={"format": "hf", "include_images": True}),
        422,
        "unsupported_export",
    )
    assert_error(await client.post(url, json={"format": "tiff"}), 422, "invalid_request")
    assert_error(
        await client.post(url, json={"format": "csv", "min_score": 0.5}), 422, "invalid_request"
    )
    missing = "/api/v1/exports/00000000-0000-0000-0000-000000000000"
    assert_error(await client.get(missing), 404, "unknown_export")
    assert_error(await client.get(f"{missing}/download"), 404, "unknown_export")


async def test_an_export_file_is_deleted_after_its_retention(
    client: httpx.AsyncClient, services: Services
) -> None:
    project = await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )
    await upload_texts(client, project, ["a late goal"])
    created = await client.post(
        f"/api/v1/projects/{project['id']}/exports", json={"format": "jsonl", "selection": "all"}
    )
    export = created.json()
    for _ in range(200):
        export = (await client.get(f"/api/v1/exports/{export['id']}")).json()
        if export["status"] != "queued" and export["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert export["status"] == "succeeded", export
    kept = datetime.fromisoformat(export["expires_at"]) - datetime.fromisoformat(
        export["finished_at"]
    )
    assert kept == timedelta(hours=168)  # MODELSHIP_EXPORT_RETENTION_HOURS' default
    async with services.db.connection() as conn:
        key = await conn.fetchval("SELECT object_key FROM exports WHERE id = $1", export["id"])
        await conn.execute(
            "UPDATE exports SET expires_at = now() - interval '1 second' WHERE id = $1",
            export["id"],
        )
    # from expires_at on: downloads refused, and the export says so
    assert_error(await client.get(export["download_url"]), 410, "export_expired")
    gone = (await client.get(f"/api/v1/exports/{export['id']}")).json()
    assert gone["status"] == "expired" and gone["download_url"] is None
    # the file stays DOWNLOAD_GRACE longer: a download begun before expiry is not cut off
    await delete_expired(services)
    assert await services.objects.get(key)

    async with services.db.connection() as conn:
        await conn.execute(
            "UPDATE exports SET expires_at = now() - $2::interval - interval '1 second'"
            " WHERE id = $1",
            export["id"],
            DOWNLOAD_GRACE,
        )
    assert await delete_expired(services) >= 1
    with pytest.raises(ObjectNotFound):
        await services.objects.get(key)
    gone = (await client.get(f"/api/v1/exports/{export['id']}")).json()
    assert gone["status"] == "expired" and gone["download_url"] is None
    assert_error(
        await client.get(f"/api/v1/exports/{export['id']}/download"), 410, "export_expired"
    )
    assert await delete_expired(services) == 0  # nothing is deleted twice


async def test_an_export_that_fails_before_writing_ends_failed_not_running(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The categories are read after the export is marked running: a database error there
    left it running, holding one of the project's open exports, until a replica restart."""
    project = await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )

    async def lost_connection(*_: Any) -> list[str]:
        raise ConnectionResetError("the database went away")

    monkeypatch.setattr(ExportStore, "categories", lost_connection)
    created = await client.post(f"/api/v1/projects/{project['id']}/exports", json={"format": "csv"})
    export = created.json()
    for _ in range(200):
        export = (await client.get(f"/api/v1/exports/{export['id']}")).json()
        if export["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert export["status"] == "failed", export


async def _queued_export(client: httpx.AsyncClient, services: Services) -> tuple[Any, Path]:
    """An export recorded but not started (as the Ingress commits it before calling the
    Exporter), and the folder its files go to."""
    project = await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )
    await upload_texts(client, project, ["a late goal", "bake the bread"])
    found = await Catalog(services.db).project("default", uuid.UUID(project["id"]))
    spec = ExportCreate(format=ExportFormat.jsonl, selection=ExportSelection.all)
    export = await ExportStore(services.db).create("default", found, spec, "test")
    return export, Path(services.objects.url) / "default" / project["id"]


async def test_an_export_two_writers_start_together_is_written_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The Ingress's call and a starting Exporter replica's resume (a rolling update, a
    second replica) both wrote the export; the file of the writer that finished first was
    orphaned for good (the expiry sweep deletes only the recorded one)."""
    export, folder = await _queued_export(client, services)
    retention = timedelta(hours=1)
    await asyncio.gather(*(run_export(services, export.id, retention) for _ in range(3)))
    done, key = await ExportStore(services.db).get("default", export.id)
    assert done.status == "succeeded" and key is not None
    assert [p.name for p in folder.iterdir()] == [Path(key).name]


async def test_an_export_whose_writer_died_is_written_once_its_lease_lapses(
    client: httpx.AsyncClient, services: Services
) -> None:
    export, folder = await _queued_export(client, services)
    store = ExportStore(services.db)
    assert await store.start(export.id, "a-writer-that-dies", 0.3) is not None
    assert export.id not in await store.unfinished()
    await run_export(services, export.id, timedelta(hours=1))  # held: it leaves it be
    assert (await store.get("default", export.id))[0].status == "running"
    assert not folder.exists() or not any(folder.iterdir())

    await asyncio.sleep(0.4)
    assert export.id in await store.unfinished()
    await run_export(services, export.id, timedelta(hours=1))
    assert (await store.get("default", export.id))[0].status == "succeeded"


async def test_a_writer_that_lost_its_lease_cannot_finish_or_fail_the_export(
    client: httpx.AsyncClient, services: Services
) -> None:
    export, _ = await _queued_export(client, services)
    store = ExportStore(services.db)
    assert await store.start(export.id, "stalled", 0.1) is not None
    await asyncio.sleep(0.2)
    assert await store.start(export.id, "successor", 60) is not None
    assert not await store.renew(export.id, "stalled", 60)
    ended = ("k", 1, 10, "application/jsonl", timedelta(hours=1))
    assert not await store.finish(export.id, "stalled", *ended)
    await store.fail(export.id, "stalled", "internal error")
    assert (await store.get("default", export.id))[0].status == "running"
    assert await store.finish(export.id, "successor", *ended)
    assert (await store.get("default", export.id))[0].status == "succeeded"
