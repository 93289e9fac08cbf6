"""Hugging Face datasets: one ``.parquet`` file that ``datasets.load_dataset("parquet", ...)``
reads with its features.

Columns: ``item_id``, ``filename``, ``status``, then ``width``/``height`` (image tasks; plus
``image``, a ``datasets.Image`` ``{"bytes", "path"}`` struct, when images are included) or
``text`` (text tasks), then per task:

- classification: ``label``, a ``ClassLabel(names=categories)`` id of the first (best)
  label, **-1 when the item has none** (the ``datasets`` convention for a missing label),
  ``score``, that label's score (null when a person set it), and ``labels``, a
  ``Sequence(ClassLabel)`` of every label in order (a person's correction may set several;
  empty when the item has none) — read ``label`` for single-label training, ``labels`` for
  multi-label;
- detection: ``objects``, ``Sequence({"bbox": [x, y, w, h] pixels, "category": ClassLabel,
  "score"})``, which ``datasets`` returns as a dict of lists, as on the Hub;
- token classification: ``entities``, ``Sequence({"start", "end", "label": ClassLabel,
  "text", "score"})``;

and ``model``, ``model_version``. The features go in the file's key-value metadata under
``huggingface`` at close (so names outside the spec, appended while writing, are in the
``ClassLabel``); the Arrow schema is not stored, so ``datasets`` reads that key. Rows are
written in row groups of ``ROW_GROUP_ROWS`` rows or ``ROW_GROUP_BYTES`` of image bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from modelship.core.rows import ExportRow, ExportTask
from modelship.exports.base import ExportSpec, WriterBase, dumps, file_name

ROW_GROUP_ROWS = 2048
ROW_GROUP_BYTES = 64 * 1024 * 1024

Feature = dict[str, Any]


class HfWriter(WriterBase):
    media_type = "application/vnd.apache.parquet"
    extension = ".parquet"

    def __init__(self, spec: ExportSpec, path: Path) -> None:
        super().__init__(spec, path)
        schema = pa.schema([(name, kind) for name, kind, _ in _columns(spec, [])])
        self._schema = schema
        self._writer = pq.ParquetWriter(path, schema, store_schema=False)
        self._buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._buffered_bytes = 0

    def _add(self, row: ExportRow, image: bytes | None) -> None:
        values: dict[str, Any] = {
            "item_id": row.item_id,
            "filename": row.filename,
            "status": row.status,
            "model": row.model,
            "model_version": row.model_version,
        }
        if self.spec.task.on_images:
            values.update(width=row.width, height=row.height)
            if image is not None:
                values["image"] = {"bytes": image, "path": file_name(row)}
                self._buffered_bytes += len(image)
        else:
            values["text"] = row.text
        ids = self.categories.id
        if self.spec.task is ExportTask.object_detection:
            values["objects"] = {
                "bbox": [[b.x, b.y, b.w, b.h] for b in row.boxes],
                "category": [ids(b.label) for b in row.boxes],
                "score": [b.score for b in row.boxes],
            }
        elif self.spec.task is ExportTask.token_classification:
            values["entities"] = {
                "start": [e.start for e in row.entities],
                "end": [e.end for e in row.entities],
                "label": [ids(e.label) for e in row.entities],
                "text": [e.text for e in row.entities],
                "score": [e.score for e in row.entities],
            }
        else:
            best = row.labels[0] if row.labels else None
            values["label"] = -1 if best is None else ids(best.name)
            values["score"] = None if best is None else best.score
            values["labels"] = [ids(label.name) for label in row.labels]
        for name, column in self._buffer.items():
            column.append(values[name])
        if (
            len(self._buffer["item_id"]) >= ROW_GROUP_ROWS
            or self._buffered_bytes >= ROW_GROUP_BYTES
        ):
            self._flush()

    def _flush(self) -> None:
        if self._buffer["item_id"]:
            self._writer.write_table(pa.Table.from_pydict(self._buffer, schema=self._schema))
        for column in self._buffer.values():
            column.clear()
        self._buffered_bytes = 0

    def _close(self) -> None:
        self._flush()
        features = {
            name: feature for name, _, feature in _columns(self.spec, self.categories.names)
        }
        self._writer.add_key_value_metadata(
            {"huggingface": dumps({"info": {"features": features}})}
        )
        self._writer.close()


def _value(dtype: str) -> Feature:
    return {"dtype": dtype, "_type": "Value"}


def _sequence(feature: Feature) -> Feature:
    # The "Sequence" spelling: every datasets release reads it (5.x maps it to List).
    return {"feature": feature, "_type": "Sequence"}


def _columns(spec: ExportSpec, names: list[str]) -> list[tuple[str, pa.DataType, Feature]]:
    """Each column's name, Arrow type and ``datasets`` feature; ``names`` go in ClassLabels."""
    string = (pa.string(), _value("string"))
    number = (pa.float64(), _value("float64"))
    label = (pa.int64(), {"names": names, "_type": "ClassLabel"})
    columns = [("item_id", *string), ("filename", *string), ("status", *string)]
    if spec.task.on_images:
        columns += [("width", pa.int32(), _value("int32")), ("height", pa.int32(), _value("int32"))]
        if spec.include_images:
            image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            columns.append(("image", image, {"_type": "Image"}))
    else:
        columns.append(("text", *string))
    fields: dict[str, tuple[pa.DataType, Feature]]
    if spec.task is ExportTask.object_detection:
        bbox = (pa.list_(pa.float64()), _sequence(_value("float64")))
        fields = {"bbox": bbox, "category": label, "score": number}
        columns.append(("objects", *_struct_of_lists(fields)))
    elif spec.task is ExportTask.token_classification:
        offset = (pa.int64(), _value("int64"))
        fields = {"start": offset, "end": offset, "label": label, "text": string, "score": number}
        columns.append(("entities", *_struct_of_lists(fields)))
    else:
        labels = (pa.list_(pa.int64()), _sequence(label[1]))
        columns += [("label", *label), ("score", *number), ("labels", *labels)]
    return [*columns, ("model", *string), ("model_version", *string)]


def _struct_of_lists(fields: dict[str, tuple[pa.DataType, Feature]]) -> tuple[pa.DataType, Feature]:
    """``Sequence({...})``: a struct of equally long lists in Arrow, as ``datasets`` stores it."""
    kind = pa.struct([(name, pa.list_(arrow)) for name, (arrow, _) in fields.items()])
    return kind, _sequence({name: feature for name, (_, feature) in fields.items()})
