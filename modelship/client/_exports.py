"""Exports: written by the server, waited for, streamed into a local file."""

from __future__ import annotations

import os
from pathlib import Path

from modelship.client._base import API, Base, Ref, ref
from modelship.client._protocol import Operation, Request, send
from modelship.client.errors import Conflict, Gone
from modelship.core.records import Export, ExportCreate, ExportFormat, ExportSelection

TERMINAL = frozenset({"succeeded", "failed", "expired"})  # expired: its file deleted


class Exports(Base):
    def create_export(
        self,
        project: Ref,
        format: ExportFormat | str,
        *,
        selection: ExportSelection | str = ExportSelection.approved,
        min_score: float | None = None,
        include_images: bool = False,
    ) -> Operation[Export]:
        """Start writing an export (csv, json, jsonl, coco, yolo, voc, hf)."""
        request = ExportCreate.model_validate(
            {
                "format": format,
                "selection": selection,
                "min_score": min_score,
                "include_images": include_images,
            }
        )
        path = f"{API}/projects/{ref(project)}/exports"
        return (yield from self._post(path, Export, request.model_dump(mode="json")))

    def get_export(self, export: Ref) -> Operation[Export]:
        return (yield from self._get(f"{API}/exports/{ref(export)}", Export))

    def wait_export(self, export: Ref, *, timeout_s: float | None = None) -> Operation[Export]:
        """Poll until the export succeeded, failed (its ``error`` says why) or expired (its
        file was deleted after the server's retention): the export, whichever it is."""
        return (
            yield from self._poll(
                f"export {ref(export)}",
                lambda: self.get_export(export),
                lambda current: current.status in TERMINAL,
                timeout_s,
            )
        )

    def download_export(self, export: Ref, path: str | os.PathLike[str]) -> Operation[Path]:
        """Stream a finished export into ``path``: a file, or a folder to put the file the
        server names in (an existing folder, or a path ending in ``/``, made if need be)."""
        folder = os.fspath(path).endswith((os.sep, os.altsep or os.sep))
        url = f"{API}/exports/{ref(export)}/download"
        request = Request("GET", url, save_to=Path(path), save_to_folder=folder)
        reply = yield from send(request, self.retry)
        assert reply.saved is not None
        return reply.saved

    def export(
        self,
        project: Ref,
        format: ExportFormat | str,
        path: str | os.PathLike[str],
        *,
        selection: ExportSelection | str = ExportSelection.approved,
        min_score: float | None = None,
        include_images: bool = False,
        timeout_s: float | None = None,
    ) -> Operation[Path]:
        """Create an export, wait for it and download it: the file's path."""
        created = yield from self.create_export(
            project, format, selection=selection, min_score=min_score, include_images=include_images
        )
        done = yield from self.wait_export(created, timeout_s=timeout_s)
        try:
            return (yield from self.download_export(done, path))
        except (Conflict, Gone) as exc:  # failed or expired: say why beside the 409 or 410
            exc.add_note(f"export {done.id} {done.status}: {done.error}")
            raise
