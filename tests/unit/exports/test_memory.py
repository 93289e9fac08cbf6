"""Memory stays flat however many rows go through a writer."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from modelship.exports import Box, ExportFormat, ExportRow, ExportSpec, ExportTask, open_writer
from tests.unit.exports.samples import CATEGORIES, item_id


def synthetic(count: int) -> Iterator[ExportRow]:
    for n in range(count):
        boxes = [Box(CATEGORIES[k], 0.5, 10.0 * k, 5.0, 20.0, 30.0) for k in range(n % 4)]
        yield ExportRow(
            item_id(n), f"f{n}.jpg", "image/jpeg", 640, 480, None, "approved", [], boxes
        )


def peak(tmp_path: Path, format: ExportFormat, count: int) -> int:
    spec = ExportSpec(format, ExportTask.object_detection, CATEGORIES)
    tracemalloc.start()
    try:
        with closing(open_writer(spec, tmp_path / f"{format}-{count}")) as writer:
            for row in synthetic(count):
                writer.add(row)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("format", [ExportFormat.coco, ExportFormat.hf])
def test_peak_memory_does_not_grow_with_rows(tmp_path: Path, format: ExportFormat) -> None:
    small, large = peak(tmp_path, format, 3_000), peak(tmp_path, format, 30_000)
    # 27,000 more rows held would add well over 10 MB; other threads of the test process
    # (a Ray driver, in a full run) add some noise to what tracemalloc sees, hence a margin
    assert large - small < 4_000_000
    assert large < 10_000_000
