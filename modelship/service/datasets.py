"""Datasets a batch job reads, without Ray: where it may read, what a source lists, and
one entry read into items (``jobs.label_dataset`` runs ``read_entry`` in Ray Data tasks).

A source is an fsspec URI (a local path, ``file://``, ``s3://``...):

- a folder: every file under it (hidden ones skipped), images or text files;
- a ``.parquet`` file: its ``path`` column (images) or ``text`` column (texts);
- for images, a manifest listing files, one per line (``.txt``), as strings or objects
  with ``path`` (``.jsonl``), or in a ``path`` column (``.csv``); relative paths are
  relative to the manifest; any other file is one image;
- for texts, a text file read as an upload reads it (``.txt`` one text a line, ``.jsonl``,
  ``.json``, ``.csv``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import mimetypes
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import fsspec
from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

from modelship.core.errors import InvalidInput, ModelShipError
from modelship.core.inputs import check_text_file, iter_texts, parse_text_file, read_image_header
from modelship.core.settings import Settings
from storage.batch import BatchItem, content_key
from storage.objects import bounded_options

_MANIFESTS = (".txt", ".jsonl", ".ndjson", ".csv")
_TEXT = "text/plain"
_PAGE = 1000  # keys a page of an S3 or GCS listing holds (their most)

logger = logging.getLogger("modelship.batch")
Matcher = Callable[[str], object]  # a compiled glob's match


class SourceRefused(InvalidInput):
    """A source a batch job may not or cannot read; refused before anything runs."""

    def __init__(self, message: str, code: str = "source_refused") -> None:
        super().__init__(message, code)


@dataclass(frozen=True)
class Entry:
    """One thing a source lists: a file to read, or a text; ``error`` when it must not
    be read (it becomes a failed item)."""

    uri: str = ""
    text: str = ""
    error: str = ""


def storage_options(uri: str, settings: Settings) -> dict[str, Any]:
    """fsspec options for ``uri``: the object store's (endpoint, credentials) when it uses
    the same protocol, else fsspec's defaults (e.g. credentials from the environment);
    with the object store's time bounds either way."""
    store = settings.object_store_url or ""
    same = _protocol(uri) == _protocol(store) and _protocol(uri) != "file"
    return bounded_options(uri, settings.object_store_options if same else None)


def allowed(uri: str, prefixes: list[str]) -> bool:
    """Whether ``uri`` lies under one of ``prefixes``, after resolving ``..`` and, for local
    paths, symbolic links (a link out of an allowed folder is outside it)."""
    return _within(_normalize(uri), _roots(prefixes))


def _roots(prefixes: list[str]) -> list[str]:
    return [_normalize(prefix).rstrip("/") for prefix in prefixes]


def _within(target: str, roots: list[str]) -> bool:
    return any(target == root or target.startswith(root + "/") for root in roots)


def check_source(uri: str, settings: Settings) -> None:
    """Refuse a source outside ``Settings.batch_prefixes``, or badly named."""
    if (named := _badly_named(uri)) is not None:
        raise SourceRefused(named.error.partition(": ")[2], "invalid_file_name")
    if not allowed(uri, settings.batch_prefixes):
        raise SourceRefused(
            f"{uri} is outside the allowed prefixes ({', '.join(settings.batch_prefixes)});"
            " set MODELSHIP_BATCH_ALLOWED_PREFIXES to read there",
            "source_not_allowed",
        )


def list_entries(uri: str, images: bool, settings: Settings) -> Iterator[Entry]:
    """What ``uri`` holds, in a stable order, listed as it is read: a folder of millions
    of files is never held whole (``BatchRun`` takes it in chunks). Iterating refuses a
    source that is missing or empty, or that cannot be listed (whatever a parser or an
    fsspec backend raises: JSON, UTF-8, parquet, botocore, a missing backend), at the
    first entry for most. A ``uri`` that does not exist but holds glob characters
    (``s3://bucket/photos/*.jpg``) is a pattern: what it matches."""
    check_source(uri, settings)
    return _refusing(uri, _entries(uri, images, settings))


def _refusing(uri: str, entries: Iterator[Entry]) -> Iterator[Entry]:
    """``entries``, with what listing them raises as a ``SourceRefused``."""
    empty = True
    try:
        for entry in entries:
            empty = False
            yield entry
    except SourceRefused:
        raise
    except ModelShipError as exc:
        raise SourceRefused(f"{uri}: {exc.message}", exc.code) from None
    except Exception as exc:
        logger.warning("could not list %s: %r", uri, exc)
        message = f"could not read {uri}: {type(exc).__name__}: {exc}"
        raise SourceRefused(message, "source_unreadable") from None
    if empty:
        raise SourceRefused(f"{uri} holds no items", "source_empty")


def _entries(uri: str, images: bool, settings: Settings) -> Iterator[Entry]:
    # listings are not cached: s3fs keeps every object's details (about 1 KB) in its
    # (process-wide) filesystem instance otherwise
    fs, path = _filesystem(uri, {**storage_options(uri, settings), "use_listings_cache": False})
    if isinstance(fs, LocalFileSystem) and os.path.isdir(path):
        yield from _walk(path, (os.path.realpath(path),), _roots(settings.batch_prefixes))
        return
    try:
        kind = fs.info(path)["type"]
    except FileNotFoundError:
        kind = "nothing"
    if kind == "directory":
        for file in _files(fs, path):
            yield _listed(_uri(fs, file), settings)  # links out refused
    elif kind == "nothing" and any(c in path for c in "*?["):
        yield from _matching(fs, path, uri, images, settings)
    elif kind == "nothing":
        raise SourceRefused(f"nothing at {uri}", "source_missing")
    elif kind != "file":  # a pipe or a device: reading it would hang
        raise SourceRefused(f"{uri} is not a file ({kind})", "source_unreadable")
    elif path.lower().endswith(".parquet"):
        yield from _parquet(fs, path, images, settings)
    elif images and path.lower().endswith(_MANIFESTS):
        yield from _manifest(fs, path, settings)
    elif images:
        yield Entry(uri=_uri(fs, path))
    else:
        yield from _texts(fs, path, settings)


def _texts(fs: fsspec.AbstractFileSystem, path: str, settings: Settings) -> Iterator[Entry]:
    """A text file's texts, read as they come: a JSON Lines, CSV or plain text file of any
    size is never held (a JSON list is read whole, within the upload limit)."""
    if path.lower().endswith(".json") and (size := fs.size(path)) > settings.max_upload_bytes:
        limit = settings.max_upload_bytes
        raise SourceRefused(f"{size} bytes; the limit is {limit}", "file_too_large")
    with fs.open(path, "rb") as raw:
        check_text_file(path, raw.read(512))
        raw.seek(0)
        with io.TextIOWrapper(raw, encoding="utf-8-sig") as content:
            yield from (Entry(text=text) for text in iter_texts(path, content))


def _walk(
    folder: str,
    chain: tuple[str, ...],
    roots: list[str],
    match: Matcher | None = None,
    depth: float = math.inf,
) -> Iterator[Entry]:
    """The files under a local ``folder`` (whose real path, and those of the folders the
    walk took to it, are ``chain``), or, given
    ``match``, those it matches or that are in a folder it matches, at most ``depth``
    folders down; hidden ones skipped, in path order (as a bucket lists its keys). Only
    one folder's names are held at a time (fsspec's ``ls`` builds a dict of about 600 B
    a file), and only links are resolved to check them against ``roots``: a link to a
    folder out of them, or to a folder the walk is in (a loop), is one failed entry, never
    followed. A folder that cannot be listed refuses the source (fsspec's ``find`` leaves
    it out)."""
    folder, real = folder.rstrip("/"), chain[-1].rstrip("/")
    names: list[str] = []
    links: set[str] = set()
    with os.scandir(folder or "/") as found:
        for entry in found:
            if not entry.name.startswith("."):
                names.append(entry.name + "/" * entry.is_dir())  # folders sort as paths do
                if entry.is_symlink():
                    links.add(entry.name)
    names.sort()
    for name in names:
        stem = name.rstrip("/")
        path = f"{folder}/{stem}"
        resolved = os.path.realpath(path) if stem in links else f"{real}/{stem}"
        matched = match is None or match(path)
        if not name.endswith("/") or (stem in links and not _within(resolved, roots)):
            if matched:
                yield _badly_named(path) or _checked(path, resolved, roots)
        elif stem in links and any(_within(above, [resolved.rstrip("/")]) for above in chain):
            if matched:
                yield Entry(uri=path, error=f"link_loop: {path} links to a folder it is in")
        elif matched:
            yield from _walk(path, (*chain, resolved), roots)
        elif depth > 1:
            yield from _walk(path, (*chain, resolved), roots, match, depth - 1)


def _files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[str]:
    """The files under ``root`` (hidden ones skipped), in path order, a page or a folder
    at a time: on S3 and GCS, the pages of one listing of every key under it (a "folder"
    of millions of keys is one); elsewhere, folder by folder (one that cannot be listed
    refuses the source, where fsspec's ``find`` leaves it out)."""
    if _service(fs) in ("s3", "gs"):
        yield from _keys(fs, f"{root.rstrip('/')}/", root)
        return
    for info in sorted(fs.ls(root, detail=True), key=_path_order):
        path = info["name"].rstrip("/")
        if path == root.rstrip("/") or posixpath.basename(path).startswith("."):
            continue
        if info["type"] == "directory":
            yield from _files(fs, path)
        else:
            yield path


def _path_order(info: dict[str, Any]) -> str:
    return str(info["name"]) + "/" * (info["type"] == "directory")


def _service(fs: fsspec.AbstractFileSystem) -> str:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "s3" if "s3" in protocols else "gs" if "gs" in protocols else protocols[0]


def _keys(fs: Any, prefix: str, root: str) -> Iterator[str]:
    """The keys starting with ``prefix`` (``bucket/key...``), in key order, hidden ones
    under ``root`` skipped, from one listing with no delimiter (S3's ListObjectsV2, GCS's
    objects.list) a page at a time."""
    bucket, _, key = prefix.partition("/")
    pages = _gcs_pages if _service(fs) == "gs" else _s3_pages
    for page in pages(fs, bucket, key):
        yield from (k for k in page if not k.endswith("/") and not _hidden(k, root))


def _gcs_pages(fs: Any, bucket: str, prefix: str) -> Iterator[list[str]]:
    token = None
    while True:
        page = sync(
            fs.loop,
            fs._call_list_objects,
            bucket,
            prefix=prefix or None,
            maxResults=_PAGE,
            pageToken=token,
        )
        yield [f"{bucket}/{item['name']}" for item in page.get("items", [])]
        if (token := page.get("nextPageToken")) is None:
            return


def _s3_pages(fs: Any, bucket: str, prefix: str) -> Iterator[list[str]]:
    keys = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def page() -> list[str]:
        names: list[str] = []
        async for info in keys:
            names.append(info["name"])
            if len(names) == _PAGE:
                break
        return names

    try:
        while names := sync(fs.loop, page):
            yield names
    finally:
        with contextlib.suppress(Exception):  # left early, or failed: the request ends
            sync(fs.loop, keys.aclose)


def _matching(
    fs: fsspec.AbstractFileSystem, pattern: str, uri: str, images: bool, settings: Settings
) -> Iterator[Entry]:
    """A pattern's files, as a folder's (one not allowed fails alone), and the files of
    the folders it matches."""
    literal = pattern[: min(i for c in "*?[" if (i := pattern.find(c)) >= 0)]
    match = re.compile(glob_translate(pattern.rstrip("/"))).match
    base = posixpath.dirname(literal)
    if isinstance(fs, LocalFileSystem):
        below = pattern.rstrip("/")[len(base) :].strip("/").split("/")
        depth = math.inf if "**" in pattern else len(below)
        chain = (os.path.realpath(base),)
        roots = _roots(settings.batch_prefixes)
        entries = _walk(base, chain, roots, match, depth) if os.path.isdir(base) else iter(())
    elif _service(fs) in ("s3", "gs") and "/" in literal:
        entries = _matching_keys(fs, match, literal, settings)
    else:
        entries = _matching_paths(fs, pattern, images, settings)
    found = False
    for entry in entries:
        found = True
        yield entry
    if not found:
        raise SourceRefused(f"nothing matches {uri}", "source_missing")


def _matching_keys(
    fs: fsspec.AbstractFileSystem, match: Matcher, literal: str, settings: Settings
) -> Iterator[Entry]:
    """On S3 and GCS, the keys starting with the pattern's part before its first wildcard,
    listed a page at a time and matched here (fsspec's ``glob`` holds every match's
    details at once): a key matches, or a folder it is in does."""
    base = posixpath.dirname(literal)
    for key in _keys(fs, literal, base):
        folders = itertools.accumulate(key[len(base) + 1 :].split("/"), posixpath.join)
        if any(match(f"{base}/{folder}") for folder in folders):
            yield _listed(_uri(fs, key), settings)


def _matching_paths(
    fs: fsspec.AbstractFileSystem, pattern: str, images: bool, settings: Settings
) -> Iterator[Entry]:
    """Elsewhere, what fsspec's ``glob`` matches (every match's details at once)."""
    for info in sorted(fs.glob(pattern, detail=True).values(), key=_path_order):
        path = info["name"]
        if posixpath.basename(path.rstrip("/")).startswith("."):
            continue  # hidden, as in a folder
        if info["type"] == "directory":
            yield from _entries(_uri(fs, path), images, settings)
        else:
            yield _listed(_uri(fs, path), settings)


def read_entry(
    entry: Entry, images: bool, settings: Settings, tenant: str, project_id: UUID
) -> list[tuple[BatchItem, bytes | None]]:
    """The items an entry holds (one image, or a text file's texts), each with the bytes
    to store under its ``object_key`` (images only). What cannot be read becomes an item
    with an error, never an exception: one bad file must not stop the job."""
    if entry.error:
        return [(_unread(entry.uri, entry.error), None)]
    if not entry.uri:
        return [(text_item(entry.text, None, settings), None)]
    limit = settings.max_image_bytes if images else settings.max_upload_bytes
    try:
        fs, path = _filesystem(entry.uri, storage_options(entry.uri, settings))
        info = fs.info(path)
        if info["type"] != "file":  # a folder, or a pipe or device (reading it would hang)
            reason = f"unreadable_file: {entry.uri} is not a file ({info['type']})"
            return [(_unread(entry.uri, reason), None)]
        if (size := info["size"]) > limit:
            reason = f"file_too_large: {size} bytes; the limit is {limit}"
            return [(_unread(entry.uri, reason), None)]
        data: bytes = fs.cat_file(path, start=0, end=size + 1)  # not what it grew to since
        if len(data) > size:
            reason = f"unreadable_file: {entry.uri} grew while it was read (still written?)"
            return [(_unread(entry.uri, reason), None)]
    except Exception as exc:  # OSError, or what a backend raises (botocore's
        # NoCredentialsError, a protocol whose fsspec package is missing)
        if not isinstance(exc, OSError):
            logger.warning("could not read %s: %r", entry.uri, exc)
        reason = f"unreadable_file: could not read {entry.uri} ({type(exc).__name__})"
        return [(_unread(entry.uri, reason), None)]
    if not images:
        try:
            texts = parse_text_file(path, data)
        except ModelShipError as exc:
            return [(_unread(entry.uri, f"{exc.code}: {exc.message}"), None)]
        if not texts:
            return [(_unread(entry.uri, f"empty_file: {entry.uri} holds no texts"), None)]
        return [(text_item(text, entry.uri, settings), None) for text in texts]
    return [image_item(data, entry.uri, settings, tenant, project_id)]


def text_item(text: str, filename: str | None, settings: Settings) -> BatchItem:
    """A text item; an empty or overlong text, or one PostgreSQL cannot hold (a NUL),
    fails as an upload would refuse it."""
    error = None
    if not text.strip():
        error = "empty_text: the text is empty"
    elif len(text) > settings.max_text_chars:
        error = f"text_too_long: {len(text)} characters; the limit is {settings.max_text_chars}"
    elif "\x00" in text:
        error = "invalid_text: the text holds a NUL character"
    return BatchItem(
        content_hash=hashlib.sha256(text.encode()).hexdigest(),
        media_type=_TEXT,
        byte_size=len(text.encode()),
        text=text.replace("\x00", "\ufffd"),  # what PostgreSQL can hold of a failed one
        filename=filename,
        error=error,
    )


def image_item(
    data: bytes, uri: str, settings: Settings, tenant: str, project_id: UUID
) -> tuple[BatchItem, bytes | None]:
    """An image checked by the upload guards (type, size, bombs) from its header; one that
    fails them is an item with the reason and no stored file."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        header = read_image_header(data, settings)
    except ModelShipError as exc:
        item = BatchItem(
            content_hash=digest,
            media_type="application/octet-stream",
            byte_size=len(data),
            text="",
            filename=uri,
            error=f"{exc.code}: {exc.message}",
        )
        return item, None
    extension = mimetypes.guess_extension(header.media_type) or ".bin"
    item = BatchItem(
        content_hash=digest,
        media_type=header.media_type,
        byte_size=len(data),
        width=header.width,
        height=header.height,
        object_key=content_key(tenant, project_id, digest, extension),
        filename=uri,
    )
    return item, data


def _unread(uri: str, reason: str) -> BatchItem:
    return BatchItem(
        content_hash="source:" + hashlib.sha256(uri.encode()).hexdigest(),
        media_type="application/octet-stream",
        byte_size=0,
        text="",
        filename=uri,
        error=reason,
    )


def _manifest(fs: fsspec.AbstractFileSystem, path: str, settings: Settings) -> Iterator[Entry]:
    """A manifest's files, read a line at a time."""
    folder = _uri(fs, posixpath.dirname(path))
    lower = path.lower()
    with fs.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig") as text:
        names: Iterator[object]
        if lower.endswith(".csv"):
            reader = csv.DictReader(text)
            if "path" not in (reader.fieldnames or []):
                raise InvalidInput("a CSV manifest needs a 'path' column", "invalid_manifest")
            names = (row["path"] for row in reader)
        elif lower.endswith((".jsonl", ".ndjson")):
            rows = (json.loads(line) for line in text if line.strip())
            names = (row.get("path") if isinstance(row, dict) else row for row in rows)
        else:
            names = (line.strip() for line in text if line.strip())
        yield from _named(names, folder, _uri(fs, path), settings)


def _named(
    names: Iterator[object], folder: str, manifest: str, settings: Settings
) -> Iterator[Entry]:
    """The files a manifest names, relative to its ``folder``; an entry that names none (an
    empty cell, ``null``, a number) is a failed entry, where it was skipped or failed all."""
    for number, name in enumerate(names, 1):
        if isinstance(name, str) and name.strip():
            yield _listed(_join(folder, name), settings)
        else:
            reason = f"invalid_manifest: entry {number} names no path: {name!r:.80}"
            yield Entry(uri=f"{manifest}#{number}", error=reason)


def _parquet(
    fs: fsspec.AbstractFileSystem, path: str, images: bool, settings: Settings
) -> Iterator[Entry]:
    """A parquet file's paths or texts, read a batch of its one column at a time; a column
    of another type than strings is refused (its values were made into texts: ``b'hi'``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = "path" if images else "text"
    with fs.open(path, "rb") as file, pq.ParquetFile(file) as table:
        if column not in table.schema_arrow.names:
            raise InvalidInput(f"the parquet file needs a {column!r} column", "invalid_manifest")
        kind = table.schema_arrow.field(column).type
        strings = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (pa.types.is_string(strings) or pa.types.is_large_string(strings)):
            message = f"the parquet file's {column!r} column holds {kind}, not strings"
            raise InvalidInput(message, "invalid_manifest")
        values = (
            value
            for batch in table.iter_batches(batch_size=_PAGE, columns=[column])
            for value in batch.column(0).to_pylist()
        )
        if images:
            yield from _named(values, _uri(fs, posixpath.dirname(path)), _uri(fs, path), settings)
        else:
            yield from (Entry(text=value or "") for value in values)


def _listed(uri: str, settings: Settings) -> Entry:
    """A listed or manifest entry, refused (as a failed item) when outside the allowed
    prefixes: a folder's file may be a link out of it; or badly named."""
    return _badly_named(uri) or _checked(uri, _normalize(uri), _roots(settings.batch_prefixes))


def _checked(uri: str, resolved: str, roots: list[str]) -> Entry:
    """``uri`` as an entry, or a failed one when outside ``roots`` (where it resolves)."""
    if _within(resolved, roots):
        return Entry(uri=uri)
    return Entry(uri=uri, error=f"source_not_allowed: {uri} is outside the allowed prefixes")


def _badly_named(uri: str) -> Entry | None:
    """A failed entry for a name that is not text Arrow, PostgreSQL and the export formats
    can hold, shown with what they cannot escaped (``caf\\xe9.jpg``); else None."""
    if (shown := _escaped(uri)) is None:
        return None
    reason = "holds a NUL character" if "\x00" in uri else "is not UTF-8"
    return Entry(uri=shown, error=f"invalid_file_name: {shown} {reason}; rename it")


def _escaped(uri: str) -> str | None:
    """``uri`` with its NUL characters, and what is not UTF-8 in it, escaped (a Latin-1
    name from an old archive: ``os.fsdecode`` keeps its bytes as surrogates; a JSON
    manifest's ``\\ud800``); None when it holds none."""
    if uri.isascii() and "\x00" not in uri:
        return None
    try:
        uri.encode()
    except UnicodeEncodeError:
        try:
            shown = uri.encode(errors="surrogateescape").decode(errors="backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate, not a byte
            shown = uri.encode(errors="backslashreplace").decode()
    else:
        shown = uri
    shown = shown.replace("\x00", "\\x00")
    return None if shown == uri else shown


def _filesystem(uri: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """``uri``'s filesystem and path, read literally: fsspec's ``url_to_fs`` reads ``::``
    as a chain of filesystems (``simplecache::/etc/hostname``), where here it is part of
    a name (``cat.png::dog.png`` was read as ``cat.png``)."""
    fs = fsspec.filesystem(_protocol(uri), **options)
    return fs, fs._strip_protocol(uri)


def _protocol(uri: str) -> str:
    protocol = fsspec.core.split_protocol(uri)[0]
    return "file" if protocol in (None, "file", "local") else protocol


def _normalize(uri: str) -> str:
    protocol, path = fsspec.core.split_protocol(uri)
    if _protocol(uri) == "file":
        return os.path.realpath(os.path.expanduser(path))
    return f"{protocol}://{posixpath.normpath(path.lstrip('/'))}"


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else str(fs.unstrip_protocol(path))


def _join(folder: str, name: str) -> str:
    if "://" in name or name.startswith("/"):
        return name
    return posixpath.join(folder, name)


def _hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root.rstrip("/") or "/")
    return any(part.startswith(".") for part in relative.split("/"))
