"""Batch jobs tier: Ray Data on the session's real local Ray cluster (``serve_cluster``),
this machine's PostgreSQL, datasets written to temporary folders."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelship.core.settings import Settings
from storage.services import Services
from tests.conftest import DATA

GOOD_IMAGES = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "cat_small.png", "cat_exif_rotated.jpg"]
# What each bad entry of the image manifest fails with (the start of its reason).
BAD_IMAGES = {
    "truncated.jpg": "corrupt_image",  # a valid header: it fails in the label actor
    "not_an_image.pdf": "unsupported_media_type",
    "bomb.png": "decompression_bomb",
    "huge_side.png": "image_too_large",
    "missing.jpg": "unreadable_file",
    "../../outside/cat.jpg": "source_not_allowed",
}
_KINDS = [
    "I love it, it works great",
    "it broke after a day, what a waste",
    "the parcel came on Tuesday",
    "excellent service and a friendly team",
    "terrible support, never again",
]


@dataclass(frozen=True)
class Datasets:
    root: Path  # the allowed prefix
    texts: Path  # a folder of text files
    images: Path  # a manifest of image paths
    text_entries: list[str]  # every text the folder holds, duplicates included
    image_entries: list[str]  # every path the manifest lists


def texts(count: int, distinct: int, seed: str = "") -> list[str]:
    """``count`` review-like texts, ``distinct`` of them different (the rest repeat)."""
    pool = [f"{_KINDS[i % len(_KINDS)]} (order {seed}{i})" for i in range(distinct)]
    return [pool[i % distinct] for i in range(count)]


def unlistable(folder: Path) -> None:
    """A folder under ``folder`` whose listing fails, even for root: folders nested past
    the longest path the kernel takes (made relative to each other's descriptors), so
    listing the deepest by its path fails with ENAMETOOLONG."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        for _ in range(os.pathconf(folder, "PC_PATH_MAX") // 250 + 1):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """979 texts in four files (850 different, one broken file) and a manifest of 21
    images (duplicates, and one entry for each way an image fails): 1,000 entries."""
    base = tmp_path_factory.mktemp("batch")
    root = base / "datasets"
    folder = root / "texts"
    folder.mkdir(parents=True)
    every = texts(978, 850)
    (folder / "reviews.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in every[:500])
    )
    (folder / "notes.txt").write_text("".join(t + "\n" for t in every[500:900]))
    with (folder / "more.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(every[900:]))
    (folder / "broken.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (folder / ".hidden.txt").write_text("never read\n")
    images = root / "images"
    images.mkdir()
    names = []
    for name in GOOD_IMAGES:
        shutil.copy(DATA / name, images / name)
        shutil.copy(DATA / name, images / f"copy_{name}")
        names += [name, f"copy_{name}"]
    names += ["cat.jpg", "coffee.jpg", "cat.jpg", "cat_small.png"]  # listed twice
    for name in BAD_IMAGES:
        if (DATA / name).exists():
            shutil.copy(DATA / name, images / name)
    (base / "outside").mkdir()
    shutil.copy(DATA / "cat.jpg", base / "outside" / "cat.jpg")
    names += list(BAD_IMAGES)
    manifest = images / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": n}) + "\n" for n in names))
    return Datasets(root, folder, manifest, every, names)


@pytest.fixture(scope="session")
def batch_settings(storage_settings: Settings, datasets: Datasets) -> Settings:
    """The session's storage settings, reading datasets from their folder only."""
    return storage_settings.model_copy(update={"batch_allowed_prefixes": [str(datasets.root)]})


@pytest.fixture(scope="module")
async def services(batch_settings: Settings) -> AsyncIterator[Services]:
    services = Services.from_settings(batch_settings)
    yield services
    await services.close()
