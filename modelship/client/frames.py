"""Records as a pandas DataFrame, for notebooks. pandas is imported only when called."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from modelship.core.records import JobResult

if TYPE_CHECKING:
    import pandas as pd


def to_dataframe(records: Iterable[BaseModel]) -> pd.DataFrame:
    """One row per record, nested fields flattened (``item.id``, ``annotation.status``).

    Job results get two more columns, ``label`` and ``score``: those of the first (best)
    label, box or entity of the output, None when there is none.
    """
    import pandas as pd

    rows = [_row(record) for record in records]
    return pd.json_normalize(rows) if rows else pd.DataFrame()


def _row(record: BaseModel) -> dict[str, Any]:
    row = record.model_dump(mode="python")
    if isinstance(record, JobResult):
        best = record.output[0] if record.output else {}
        row["label"] = best.get("label")
        row["score"] = best.get("score")
    return row
