"""Progress of long calls (uploads, jobs): a ``(done, total)`` callback and an optional
tqdm bar. tqdm is not a dependency: asking for a bar without it installed says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[int, int], None]
"""Called with ``(done, total)``: files uploaded, or job items in a terminal state."""


class Progress:
    """Reports to ``callback`` and, with ``bar``, a tqdm bar (``tqdm.auto``: a widget in a
    notebook, text in a terminal). ``close()`` ends the bar."""

    def __init__(
        self, callback: ProgressCallback | None, bar: bool, description: str, unit: str
    ) -> None:
        self._callback = callback
        self._bar: Any = None
        if bar:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:
                raise ModuleNotFoundError("bar=True needs tqdm: pip install tqdm") from exc
            self._bar = tqdm(desc=description, unit=unit, total=None)

    def update(self, done: int, total: int) -> None:
        if self._callback is not None:
            self._callback(done, total)
        if self._bar is not None:
            self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
