"""Label actors for tests: one that dies once mid-run, as a killed or preempted worker
would; one that counts the batches it labels; one that dies on a poison item; one whose
object store is down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jobs.predict import LabelActor
from storage.objects import ObjectStore


class CrashOnce(LabelActor):
    """The real ``LabelActor``; its process exits on its second batch while the file
    ``<data_dir>/crash-once`` exists, deleting the file first, so only one actor dies."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._flag = Path(kwargs["settings"].data_dir) / "crash-once"
        self._batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._batches += 1
        if self._batches == 2:
            try:
                self._flag.unlink()
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().__call__(batch)


class Counted(LabelActor):
    """The real ``LabelActor``, appending a line to ``<data_dir>/batches-labeled`` for each
    batch it labels: what a test counts to see when a run stopped."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._log = Path(kwargs["settings"].data_dir) / "batches-labeled"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._log.open("a") as log:
            log.write(f"{len(batch['item_id'])}\n")
        return super().__call__(batch)


POISON = "poison pill"


class KilledByPoison(LabelActor):
    """The real ``LabelActor``, whose process exits on any batch holding a text with
    ``POISON``: an item that kills the model's process every time (a native library's
    crash, an out-of-memory kill)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if any(POISON in str(text) for text in batch["text"]):
            os._exit(1)
        return super().__call__(batch)


class StoreOutage(LabelActor):
    """The real ``LabelActor``, reading items' files from a folder that went away after
    the store opened it: the object store is down (a volume unmounted, a bucket gone)
    while the job labels."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        gone = Path(kwargs["settings"].data_dir) / f"unmounted-{os.getpid()}"
        self._objects = ObjectStore(str(gone))  # creates the folder
        gone.rmdir()
