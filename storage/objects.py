"""Object storage for uploaded files: a local folder, S3, GCS or any fsspec URL.

Keys are generated here (``tenant/project/<uuid4 hex><ext>``), never taken from user file
names, and every key is checked before it reaches a file system: no path traversal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import fsspec
from botocore.exceptions import BotoCoreError
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from modelship.core.errors import ServiceUnavailable

logger = logging.getLogger("modelship.storage")

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"  # starts alphanumeric: never "." or ".."
_KEY = re.compile(rf"{_SEGMENT}/{_SEGMENT}/[0-9a-f]{{32}}\.[a-z0-9]{{1,8}}")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
_UNAVAILABLE = "object_store_unavailable"
# What an unreachable store looks like: s3fs maps S3 replies to OSError, but connection
# failures come through as botocore's own errors (botocore is a dependency of s3fs);
# gcsfs raises aiohttp's errors (OSError) and, for a 5xx or a refusal, its HttpError.
_OUTAGES: tuple[type[Exception], ...] = (OSError, TimeoutError, BotoCoreError)
# s3fs tries a timed-out request 5 times and botocore each of those 5 times: an S3 endpoint
# that accepts connections but never answers held one call ~400 s. One try each in botocore
# and two in s3fs bound it to ~30 s (2 x the 15 s read timeout); a chunk read or a part
# upload is one request, so large files are not cut short. OBJECT_STORE_OPTIONS'
# config_kwargs win over these.
_S3_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 15,
    "retries": {"total_max_attempts": 1},
}
_S3_TRIES = 2
# gcsfs tries each request 6 times (fixed), 31 s of backoff between them; a connection and
# each read get these bounds, so an endpoint that never answers holds a call ~2 min, not
# 6 x aiohttp's 5 min. OBJECT_STORE_OPTIONS' requests_timeout wins.
_GCS_CONNECT_S, _GCS_READ_S = 5, 15


def bounded_options(url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """fsspec ``options`` for ``url`` with our time bounds where they set none: on S3
    (botocore's timeouts, one try each) and GCS (aiohttp's connect and read timeouts), a
    call that gets no answer ends in seconds to minutes, not many minutes."""
    bounded = dict(options or {})
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in ("s3", "s3a"):
        bounded["config_kwargs"] = {**_S3_CONFIG, **bounded.get("config_kwargs", {})}
    elif protocol in ("gs", "gcs"):
        import aiohttp

        bounded.setdefault(
            "requests_timeout",
            aiohttp.ClientTimeout(sock_connect=_GCS_CONNECT_S, sock_read=_GCS_READ_S),
        )
    return bounded


class ObjectNotFound(KeyError):
    """No object under this key."""


class ObjectStore:
    """Bytes under generated keys, in a folder or a bucket; blocking calls run in threads.

    Args:
        url: a folder path, ``file://...``, ``s3://bucket/prefix``, ``gs://bucket/prefix``,
            ``memory://...``; a local folder is created if missing.
        storage_options: fsspec options, e.g. ``endpoint_url``, ``key`` and ``secret`` for
            S3, ``project`` or ``token`` for GCS (default: the environment's credentials).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        protocol = fsspec.core.split_protocol(url)[0]
        s3 = protocol in ("s3", "s3a")
        self._outages = _OUTAGES
        if protocol in ("gs", "gcs"):
            from gcsfs.retry import HttpError

            self._outages += (HttpError,)
        self._fs, root = fsspec.core.url_to_fs(url, **bounded_options(url, storage_options))
        if s3:
            self._fs.retries = _S3_TRIES  # an attribute of s3fs, not an option
        self._local = isinstance(self._fs, LocalFileSystem)
        self._root = root.rstrip("/")
        # A folder we create, unlike a bucket, which must exist already.
        self._folder = isinstance(self._fs, LocalFileSystem | MemoryFileSystem)
        if self._folder:
            self._fs.makedirs(self._root, exist_ok=True)

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there; atomic for local files.

        Raises:
            ValueError: ``key`` was not made by ``new_key``.
            ServiceUnavailable: the storage cannot be reached.
        """
        path = self._path(key)
        write = _write_local if self._local else self._fs.pipe_file
        await self._call(key, write, path, data)

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``.

        Raises:
            ObjectNotFound: nothing is stored under ``key``.
            ValueError: ``key`` was not made by ``new_key``.
            ServiceUnavailable: the storage cannot be reached.
        """
        data: bytes = await self._call(key, self._fs.cat_file, self._path(key))
        return data

    async def put_file(self, key: str, local_path: Path) -> None:
        """Upload a local file under ``key`` without reading it into memory."""
        path = self._path(key)
        if self._local:
            await self._call(key, _copy_local, str(local_path), path)
        else:
            await self._call(key, self._fs.put_file, str(local_path), path)

    async def read_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object's bytes in chunks: for downloads larger than memory should hold.

        Raises:
            ObjectNotFound: nothing is stored under ``key`` (before the first chunk).
        """
        handle = await self._call(key, self._fs.open, self._path(key), "rb")
        try:
            while chunk := await self._call(key, handle.read, chunk_bytes):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def size(self, key: str) -> int:
        size: int = await self._call(key, self._fs.size, self._path(key))
        return size

    async def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing object is not an error.

        Raises:
            ValueError: ``key`` was not made by ``new_key``.
            ServiceUnavailable: the storage cannot be reached.
        """
        with contextlib.suppress(ObjectNotFound):
            await self._call(key, self._fs.rm_file, self._path(key))

    async def ping(self) -> None:
        """Check that the folder or bucket is reachable (one metadata call).

        Raises:
            ServiceUnavailable: it is not.
        """
        if not await self._container_exists():
            raise ServiceUnavailable(f"no folder or bucket at {self.url}", _UNAVAILABLE)

    async def _container_exists(self) -> bool:
        """Whether the folder or bucket is there (a reachable store without it is broken)."""
        # The bucket, not the prefix: an empty prefix does not exist in S3.
        target = self._root if self._folder else self._root.lstrip("/").split("/", 1)[0]
        try:
            info = await asyncio.to_thread(self._fs.info, target, refresh=True)
        except FileNotFoundError:
            return False
        except self._outages as exc:
            logger.warning("object storage %s failed: %r", self.url, exc)
            raise ServiceUnavailable("object storage unavailable", _UNAVAILABLE) from exc
        return bool(info.get("type") == "directory")

    @staticmethod
    def new_key(tenant: str, project: str, extension: str) -> str:
        """A fresh key ``tenant/project/<uuid4 hex><ext>``.

        ``extension`` is kept (lower-cased) when it looks like ``.jpg``: a dot and 1 to 8
        letters or digits; anything else becomes ``.bin``.

        Raises:
            ValueError: ``tenant`` or ``project`` is not a safe path segment.
        """
        for name, value in (("tenant", tenant), ("project", project)):
            if not re.fullmatch(_SEGMENT, value):
                raise ValueError(f"{name} {value!r} cannot be part of an object key")
        ext = extension.lower() if _EXTENSION.fullmatch(extension) else ".bin"
        return f"{tenant}/{project}/{uuid4().hex}{ext}"

    def _path(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not an object key made by ObjectStore.new_key")
        return f"{self._root}/{key}"

    async def _call(self, key: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking file system call in a thread and translate its errors."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except FileNotFoundError:
            # No such object, or no folder or bucket at all: a volume not mounted, a bucket
            # deleted or misnamed. That is an outage (503; a job gives its batch back), not
            # a missing file (which fails a job's item for good).
            if not await self._container_exists():
                logger.warning("object storage %s: no folder or bucket", self.url)
                # the URL stays in the log: clients see this message
                raise ServiceUnavailable("object storage unavailable", _UNAVAILABLE) from None
            raise ObjectNotFound(key) from None
        except self._outages as exc:
            logger.warning("object storage %s failed: %r", self.url, exc)
            raise ServiceUnavailable("object storage unavailable", _UNAVAILABLE) from exc


def _copy_local(source: str, path: str) -> None:
    """Copy to a temporary file beside ``path``, then rename, as ``_write_local`` does."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid4().hex}.tmp")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_local(path: str, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
