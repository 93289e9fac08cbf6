"""Uploads: files, folders and texts sent in as few requests as the server's limits allow."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from modelship.client._base import API, Base, Ref, ref
from modelship.client._labeling import file_part
from modelship.client._protocol import Operation, Request, send
from modelship.client.errors import PayloadTooLarge
from modelship.client.progress import Progress, ProgressCallback
from modelship.core.records import Duplicate, Item, UploadResponse

_TOO_MANY = frozenset({"too_many_files", "too_many_texts"})  # the server's codes for counts
_PART_OVERHEAD = 512  # multipart headers and boundary of one file part, generously


class UploadResult(BaseModel):
    """What a batched upload stored: every new item, every duplicate (``index`` counts
    from the start of the whole upload) and the request id of each request sent."""

    items: list[Item]
    duplicates: list[Duplicate]
    request_ids: list[str]


class Uploads(Base):
    def upload_files(
        self,
        project: Ref,
        paths: Sequence[str | os.PathLike[str]],
        *,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[UploadResult]:
        """Upload files (images, or .jsonl/.json/.csv/.txt texts) in as few requests as
        the limits allow; ``progress(done, total)`` counts files."""
        files = [Path(path) for path in paths]
        sizes = [path.stat().st_size + _PART_OVERHEAD for path in files]

        def request(start: int, stop: int) -> Request:
            parts = [file_part(path, i) for i, path in enumerate(files[start:stop])]
            return Request("POST", f"{API}/projects/{ref(project)}/items", files=parts)

        return (yield from self._upload(sizes, request, Progress(progress, bar, "upload", "file")))

    def upload_folder(
        self,
        project: Ref,
        folder: str | os.PathLike[str],
        pattern: str = "*",
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[UploadResult]:
        """Upload the folder's files matching ``pattern`` (hidden ones skipped), in name
        order, as ``upload_files`` does."""
        root = Path(folder)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")
        found = root.rglob(pattern) if recursive else root.glob(pattern)
        paths = sorted(
            path
            for path in found
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
        )
        if not paths:
            raise FileNotFoundError(f"no file in {root} matches {pattern!r}")
        return (yield from self.upload_files(project, paths, progress=progress, bar=bar))

    def upload_texts(
        self,
        project: Ref,
        texts: Sequence[str],
        *,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[UploadResult]:
        """Upload texts as JSON, batched like files; ``progress`` counts texts."""
        sizes = [len(text.encode()) + 8 for text in texts]

        def request(start: int, stop: int) -> Request:
            body = {"texts": list(texts[start:stop])}
            return Request("POST", f"{API}/projects/{ref(project)}/items", json=body)

        return (yield from self._upload(sizes, request, Progress(progress, bar, "upload", "text")))

    def _upload(
        self, sizes: list[int], request: Callable[[int, int], Request], progress: Progress
    ) -> Operation[UploadResult]:
        """Send batches within the limits; a batch the server finds too large is halved
        (and so is the limit it broke, files or bytes, for the batches after it)."""
        result = UploadResult(items=[], duplicates=[], request_ids=[])
        max_count, max_bytes = self.batch_files, self.batch_bytes
        start = 0
        try:
            while start < len(sizes):
                stop, used = start + 1, sizes[start]
                while stop < len(sizes) and stop - start < max_count:
                    if used + sizes[stop] > max_bytes:
                        break
                    used += sizes[stop]
                    stop += 1
                try:
                    reply = yield from send(request(start, stop), self.retry)
                except PayloadTooLarge as exc:
                    if stop - start == 1 or exc.code == "file_too_large":
                        raise
                    if exc.code in _TOO_MANY:
                        max_count = (stop - start) // 2
                    else:  # the body was over the server's byte limit
                        max_bytes = used // 2
                    continue
                page = reply.parse(UploadResponse)
                offset = len(result.items) + len(result.duplicates)
                result.items += page.items
                result.duplicates += [
                    d.model_copy(update={"index": offset + d.index}) for d in page.duplicates
                ]
                result.request_ids.append(page.request_id)
                start = stop
                progress.update(start, len(sizes))
            return result
        finally:
            progress.close()
