"""What a batch job may read and what it finds there (no Ray: plain functions over real
files)."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from modelship.core.settings import Settings
from modelship.service import datasets
from modelship.service.datasets import (
    Entry,
    SourceRefused,
    allowed,
    list_entries,
    read_entry,
)
from tests.conftest import DATA
from tests.jobs.conftest import unlistable

PROJECT = uuid.uuid4()


def listed(uri: str, images: bool, settings: Settings) -> list[Entry]:
    return list(list_entries(uri, images, settings))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(root: Path, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "home", batch_allowed_prefixes=[str(root)], max_text_chars=50
    )


def test_prefixes_hold_after_dots_and_links(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    prefixes = [str(root), "s3://bucket/datasets"]
    assert allowed(str(root / "a" / "b.jpg"), prefixes)
    assert allowed(f"file://{root}/a.jpg", prefixes)
    assert not allowed(f"{root}/../secret/a.jpg", prefixes)
    assert not allowed(str(root / "link" / "a.jpg"), prefixes)  # a link out of the folder
    assert not allowed(f"{root}-other/a.jpg", prefixes)  # a sibling sharing the prefix
    assert allowed("s3://bucket/datasets/x/y.jpg", prefixes)
    assert not allowed("s3://bucket/datasets/../private/y.jpg", prefixes)
    assert not allowed("s3://bucket/datasets-2/y.jpg", prefixes)
    assert not allowed("gs://bucket/datasets/y.jpg", prefixes)


def test_default_prefixes_are_the_data_dir_and_the_object_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, object_store_url="s3://store/objects")
    assert settings.batch_prefixes == [str(tmp_path), "s3://store/objects"]


def test_a_folder_of_text_files_and_an_image_manifest(root: Path, settings: Settings) -> None:
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("one\ntwo\n")
    (root / "texts" / ".hidden.txt").write_text("never\n")
    assert listed(str(root / "texts"), False, settings) == [
        Entry(uri=str(root / "texts" / "a.txt"))
    ]
    (root / "texts" / "b.txt").symlink_to("/etc/passwd")  # was read, line by line
    link = str(root / "texts" / "b.txt")
    assert listed(str(root / "texts"), False, settings)[1] == Entry(
        uri=link, error=f"source_not_allowed: {link} is outside the allowed prefixes"
    )
    manifest = root / "images.jsonl"
    manifest.write_text(json.dumps({"path": "cat.jpg"}) + "\n" + json.dumps("/etc/hosts") + "\n")
    assert listed(str(manifest), True, settings) == [
        Entry(uri=f"{root}/cat.jpg"),
        Entry(
            uri="/etc/hosts", error="source_not_allowed: /etc/hosts is outside the allowed prefixes"
        ),
    ]
    csv_manifest = root / "images.csv"
    csv_manifest.write_text("path,split\nsub/dog.png,train\n")
    assert listed(str(csv_manifest), True, settings) == [Entry(uri=f"{root}/sub/dog.png")]


def test_a_manifest_is_read_as_it_is_listed(root: Path, settings: Settings) -> None:
    """Entries come before the whole manifest is read: a line that does not parse fails
    where it is, after the entries before it. The whole file was read and held first."""
    manifest = root / "images.jsonl"
    manifest.write_text('"a.jpg"\n"b.jpg"\n{"path": \n')
    entries = list_entries(str(manifest), True, settings)
    assert next(entries) == Entry(uri=f"{root}/a.jpg")
    assert next(entries) == Entry(uri=f"{root}/b.jpg")
    with pytest.raises(SourceRefused) as refused:
        next(entries)
    assert refused.value.code == "source_unreadable" and "JSONDecodeError" in str(refused.value)


def test_a_text_file_is_read_as_it_is_listed(root: Path, settings: Settings) -> None:
    """A JSON Lines, CSV or plain text source is read a line at a time, past the upload
    limit (a text dataset is often one big file); it was read whole, within the limit.
    Old Mac line ends (a lone CR) end lines too."""
    small = settings.model_copy(update={"max_upload_bytes": 100})
    (root / "reviews.jsonl").write_text('"one"\n{"text": "two"}\n' * 10 + "{broken\n")
    entries = list_entries(str(root / "reviews.jsonl"), False, small)
    assert [next(entries).text for _ in range(20)] == ["one", "two"] * 10
    with pytest.raises(SourceRefused) as refused:
        next(entries)
    assert refused.value.code == "invalid_text_file"
    (root / "old.txt").write_bytes(b"one\rtwo\r\nthree\n")
    assert [e.text for e in listed(str(root / "old.txt"), False, small)] == ["one", "two", "three"]
    (root / "reviews.csv").write_text('id,text\n1,"a, quoted\nline"\n2,plain\n')
    texts = [e.text for e in listed(str(root / "reviews.csv"), False, small)]
    assert texts == ["a, quoted\nline", "plain"]


def test_parquet_sources(root: Path, settings: Settings) -> None:
    pq.write_table(pa.table({"text": ["a review", "another"]}), root / "texts.parquet")
    assert listed(str(root / "texts.parquet"), False, settings) == [
        Entry(text="a review"),
        Entry(text="another"),
    ]
    pq.write_table(pa.table({"path": ["x.jpg"]}), root / "paths.parquet")
    assert listed(str(root / "paths.parquet"), True, settings) == [Entry(uri=f"{root}/x.jpg")]
    with pytest.raises(SourceRefused) as refused:
        listed(str(root / "paths.parquet"), False, settings)
    assert refused.value.code == "invalid_manifest"


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("/etc", "source_not_allowed"),
        ("missing", "source_missing"),
        ("empty", "source_empty"),
        ("big.json", "file_too_large"),
        ("photo.png", "unsupported_media_type"),  # a text project's source must be texts
    ],
)
def test_sources_refused(root: Path, settings: Settings, source: str, code: str) -> None:
    (root / "empty").mkdir()
    (root / "big.json").write_text(json.dumps(["a line"] * 20))
    (root / "photo.png").write_bytes((DATA / "cat_small.png").read_bytes())
    uri = source if source.startswith("/") else str(root / source)
    if source == "big.json":
        settings = settings.model_copy(update={"max_upload_bytes": 100})
    with pytest.raises(SourceRefused) as refused:
        listed(uri, False, settings)
    assert refused.value.code == code


def test_a_gcs_folder_and_manifest_are_listed_and_read(gcs_options: dict[str, Any]) -> None:
    """gs:// sources with the object store's options (same protocol): listed, allowed by
    prefix, and read into items."""
    settings = Settings(
        object_store_url="gs://labels/objects",
        object_store_options=gcs_options,
        batch_allowed_prefixes=["gs://labels/datasets"],
    )
    fs = fsspec.filesystem("gs", **gcs_options)
    folder = f"labels/datasets/{uuid.uuid4().hex}"
    fs.pipe(f"{folder}/images/cat.jpg", (DATA / "cat.jpg").read_bytes())
    fs.pipe(f"{folder}/manifest.jsonl", b'{"path": "images/cat.jpg"}\n"gs://labels/secret.jpg"\n')
    cat = f"gs://{folder}/images/cat.jpg"
    assert listed(f"gs://{folder}/images/", True, settings) == [Entry(uri=cat)]
    found = listed(f"gs://{folder}/manifest.jsonl", True, settings)
    assert found[0] == Entry(uri=cat)
    assert found[1].error is not None and found[1].error.startswith("source_not_allowed")
    [(image, data)] = read_entry(Entry(uri=cat), True, settings, "t", PROJECT)
    assert data == (DATA / "cat.jpg").read_bytes() and image.error is None
    with pytest.raises(SourceRefused) as refused:
        listed(f"gs://{folder}/nothing/", True, settings)
    assert refused.value.code == "source_missing"


# a dataset's files (and a folder placeholder, or an empty folder), and what a source
# lists under it (the folder, or a glob), in path order, on any filesystem
LAYOUT = ["b.jpg", "a/z.jpg", "a/.hidden/x.jpg", ".DS_Store", "c/d/e.jpg", "a.jpg", "empty/"]
PATTERNS = {
    "": ["a.jpg", "a/z.jpg", "b.jpg", "c/d/e.jpg"],  # the folder
    "/*.jpg": ["a.jpg", "b.jpg"],
    "/[ac]*": ["a.jpg", "a/z.jpg", "c/d/e.jpg"],  # a folder that matches: its files
    "/**/e.jpg": ["c/d/e.jpg"],
    "/c/?/*": ["c/d/e.jpg"],
    "/c/*": ["c/d/e.jpg"],
}


def test_a_local_folder_is_listed_in_path_order_as_a_bucket_is(
    root: Path, settings: Settings, tmp_path: Path
) -> None:
    """The same files in the same order as a bucket's keys, with links followed inside the
    allowed folder; a link out of it, or to a folder it is in, is one failed entry, not
    followed. fsspec's ``ls`` listed ``a/z.jpg`` before ``a.jpg`` and held a dict of about
    600 B a file for a folder; its ``glob``, every match's; a link loop was followed until
    the kernel refused the path, and a folder linked out was listed to refuse each file."""
    for key in LAYOUT:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        if not key.endswith("/"):
            (root / key).write_bytes(b"x")
    for pattern, expected in PATTERNS.items():
        for uri in [f"{root}{pattern}", f"file://{root}{pattern}"]:
            assert listed(uri, True, settings) == [Entry(uri=f"{root}/{key}") for key in expected]
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "c" / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "c" / "in").symlink_to(root / "a")
    (root / "c" / "d" / "loop").symlink_to(root / "c")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.jpg").write_bytes(b"x")
    (root / "c" / "away").symlink_to(tmp_path / "elsewhere")
    out, loop, away = f"{root}/c/out.jpg", f"{root}/c/d/loop", f"{root}/c/away"
    assert listed(f"{root}/c", True, settings) == [
        Entry(uri=away, error=f"source_not_allowed: {away} is outside the allowed prefixes"),
        Entry(uri=f"{root}/c/d/e.jpg"),
        Entry(uri=loop, error=f"link_loop: {loop} links to a folder it is in"),
        Entry(uri=f"{root}/c/in/z.jpg"),
        Entry(uri=out, error=f"source_not_allowed: {out} is outside the allowed prefixes"),
    ]
    found = listed(f"{root}/c/*/*.jpg", True, settings)
    assert found == [Entry(uri=f"{root}/c/d/e.jpg"), Entry(uri=f"{root}/c/in/z.jpg")]


def test_a_name_that_is_not_utf8_fails_alone(root: Path, settings: Settings) -> None:
    """A file named in Latin-1 (``café`` from an old archive) is a failed entry naming it
    with its bytes escaped; a source named so is refused. Its name was listed as Python
    keeps such bytes (surrogates), which Arrow and PostgreSQL refuse: the whole job
    failed at its first chunk."""
    (root / "cat.jpg").write_bytes(b"x")
    odd = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(odd)
    open(os.path.join(odd, b"a.jpg"), "wb").close()
    shown = f"{root}/caf\\xe9/a.jpg"
    assert listed(str(root), True, settings) == [
        Entry(uri=shown, error=f"invalid_file_name: {shown} is not UTF-8; rename it"),
        Entry(uri=f"{root}/cat.jpg"),
    ]
    with pytest.raises(SourceRefused) as refused:
        listed(os.fsdecode(odd), True, settings)
    assert refused.value.code == "invalid_file_name"
    assert refused.value.message == f"{root}/caf\\xe9 is not UTF-8; rename it"


def test_a_manifest_entry_that_names_no_file_fails_alone(root: Path, settings: Settings) -> None:
    """Each manifest entry that names no path, or a name no text column can hold, is a
    failed entry of its own; the others are listed. A number or a list failed the whole
    source (TypeError), as did a NUL (realpath) and a lone surrogate; an empty cell or a
    ``null`` was skipped without a word."""
    rows = ['"a.jpg"', '{"path": 123}', '{"path": ["b.jpg"]}', '{"path": null}']
    rows += ['{"file": "c.jpg"}', '"d\\u0000.jpg"', '"\\ud800.jpg"', '{"path": "e.jpg"}']
    (root / "m.jsonl").write_text("\n".join(rows) + "\n")
    found = listed(str(root / "m.jsonl"), True, settings)
    assert [entry.uri for entry in found] == [
        f"{root}/a.jpg",
        *(f"{root}/m.jsonl#{number}" for number in (2, 3, 4, 5)),
        f"{root}/d\\x00.jpg",
        f"{root}/\\ud800.jpg",
        f"{root}/e.jpg",
    ]
    assert [entry.error.partition(":")[0] for entry in found] == [
        "",
        *["invalid_manifest"] * 4,
        *["invalid_file_name"] * 2,
        "",
    ]
    assert found[1].error == "invalid_manifest: entry 2 names no path: 123"
    assert found[5].error.endswith("d\\x00.jpg holds a NUL character; rename it")
    (root / "m.csv").write_text("path,split\na.jpg,train\n,test\n")
    assert [e.error for e in listed(str(root / "m.csv"), True, settings)] == [
        "",
        "invalid_manifest: entry 2 names no path: ''",
    ]
    pq.write_table(pa.table({"path": ["a.jpg", None]}), root / "paths.parquet")
    assert [e.error for e in listed(str(root / "paths.parquet"), True, settings)] == [
        "",
        "invalid_manifest: entry 2 names no path: None",
    ]
    pq.write_table(pa.table({"text": [b"hi"]}), root / "bytes.parquet")
    with pytest.raises(SourceRefused) as refused:
        listed(str(root / "bytes.parquet"), False, settings)  # was the text "b'hi'"
    assert refused.value.message.endswith(
        "the parquet file's 'text' column holds binary, not strings"
    )


def test_names_are_read_as_they_are_written(
    root: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``::`` is part of a file's name, not fsspec's chaining of filesystems:
    ``cat.png::dog.png`` was read as ``cat.png``, and ``simplecache::/etc/hostname``
    passed the prefix check from an allowed working directory and was listed, to be read,
    as ``file:///etc/hostname``."""
    (root / "cat.png").write_bytes((DATA / "cat_small.png").read_bytes())
    (root / "cat.png::dog.png").write_bytes((DATA / "cat.jpg").read_bytes())
    entries = listed(str(root), True, settings)
    assert entries == [Entry(uri=f"{root}/cat.png"), Entry(uri=f"{root}/cat.png::dog.png")]
    read = [read_entry(entry, True, settings, "t", PROJECT)[0][1] for entry in entries]
    assert read == [(DATA / "cat_small.png").read_bytes(), (DATA / "cat.jpg").read_bytes()]
    monkeypatch.chdir(root)
    with pytest.raises(SourceRefused) as refused:
        listed("simplecache::/etc/hostname", False, settings)
    assert refused.value.code == "source_missing"


def test_folders_linked_to_each_other_are_listed_once(root: Path, settings: Settings) -> None:
    """Two folders that link to each other: each link is a failed entry after its folder
    was walked once through it. The walk followed them until the kernel refused the path
    (ELOOP), which refused the whole source."""
    for name in "ab":
        (root / name).mkdir()
        (root / name / f"{name}.jpg").write_bytes(b"x")
    (root / "a" / "to_b").symlink_to(root / "b")
    (root / "b" / "to_a").symlink_to(root / "a")
    found = listed(str(root), True, settings)
    loop = [entry.uri for entry in found if entry.error.startswith("link_loop")]
    assert [entry.uri for entry in found if not entry.error] == [
        f"{root}/a/a.jpg", f"{root}/a/to_b/b.jpg", f"{root}/b/b.jpg", f"{root}/b/to_a/a.jpg"
    ]  # fmt: skip
    assert loop == [f"{root}/a/to_b/to_a", f"{root}/b/to_a/to_b"]


def test_what_a_file_holds_is_read_within_its_limit(
    root: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is read no further than the size it had when it was looked at (within its
    limit), and fails if it grew (a writer appends between the look and the read: the
    race is made certain by appending as fsspec's ``info`` answers); it was read whole,
    past the limit. An empty text file is a
    failed item, where it left no item at all; a NUL fails its text alone."""
    small = settings.model_copy(update={"max_upload_bytes": 100})
    growing = root / "growing.txt"
    growing.write_text("a line\n")
    info = LocalFileSystem.info

    def appended(fs: LocalFileSystem, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = info(fs, path, **kwargs)
        with open(path, "a") as file:
            file.write("another line\n" * 1000)
        return answer

    monkeypatch.setattr(LocalFileSystem, "info", appended)
    [(item, _)] = read_entry(Entry(uri=str(growing)), False, small, "t", PROJECT)
    assert item.error == f"unreadable_file: {growing} grew while it was read (still written?)"
    monkeypatch.undo()
    (root / "empty.txt").write_text("\n\n")
    [(item, _)] = read_entry(Entry(uri=str(root / "empty.txt")), False, settings, "t", PROJECT)
    assert item.error == f"empty_file: {root}/empty.txt holds no texts"
    (root / "nul.txt").write_text("a\x00b\n")
    [(item, _)] = read_entry(Entry(uri=str(root / "nul.txt")), False, settings, "t", PROJECT)
    assert item.error == "invalid_text: the text holds a NUL character"
    assert item.text == "a\ufffdb"  # what PostgreSQL can hold


@pytest.mark.timeout(20)
def test_a_pipe_is_never_read(root: Path, settings: Settings) -> None:
    """A named pipe (or a device) in a folder is a failed item, and refused as a source:
    reading one blocked its read task, and the job, until a writer came, maybe never."""
    (root / "images").mkdir()
    os.mkfifo(root / "images" / "pipe.jpg")
    [entry] = listed(str(root / "images"), True, settings)
    [(item, data)] = read_entry(entry, True, settings, "t", PROJECT)
    assert data is None and item.filename == str(root / "images" / "pipe.jpg")
    assert item.error == f"unreadable_file: {root}/images/pipe.jpg is not a file (other)"
    for images in [True, False]:
        with pytest.raises(SourceRefused) as refused:
            listed(str(root / "images" / "pipe.jpg"), images, settings)
        assert refused.value.code == "source_unreadable"
        assert refused.value.message == f"{root}/images/pipe.jpg is not a file (other)"


def test_another_filesystem_is_listed_in_path_order_too() -> None:
    """A filesystem that is neither local nor a bucket (fsspec's in-memory one here) is
    listed folder by folder with fsspec's ``ls``, and globbed with its ``glob``."""
    settings = Settings(batch_allowed_prefixes=["memory://datasets"])
    folder = f"/datasets/{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for key in LAYOUT:
        fs.mkdir(f"{folder}/{key}") if key.endswith("/") else fs.pipe(f"{folder}/{key}", b"x")
    for pattern, expected in PATTERNS.items():
        found = listed(f"memory://{folder}{pattern}", True, settings)
        assert found == [Entry(uri=f"memory://{folder}/{key}") for key in expected], pattern


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_a_bucket_folder_is_listed_a_page_at_a_time_and_kept_nowhere(
    protocol: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key under the prefix, nested or not, or matching a glob, in key order, hidden
    ones and folder placeholders skipped, across listing pages (S3: moto; GCS:
    gcp-storage-emulator, which answers one page whatever the page size asks).
    s3fs's ``find`` held every key's details (about 1 KB each) at once and kept them in
    its process-wide filesystem; gcsfs's ``ls``, a folder's; fsspec's ``glob``, every
    match's."""
    monkeypatch.setattr(datasets, "_PAGE", 2)
    options = request.getfixturevalue("s3_options" if protocol == "s3" else "gcs_options")
    settings = Settings(
        object_store_url=f"{protocol}://labels/objects",
        object_store_options=options,
        batch_allowed_prefixes=[f"{protocol}://labels/datasets"],
    )
    folder = f"labels/datasets/{uuid.uuid4().hex}"
    fs = fsspec.filesystem(protocol, **options)
    for key in LAYOUT:
        fs.pipe(f"{folder}/{key}", b"" if key.endswith("/") else b"x")
    for pattern, expected in PATTERNS.items():
        found = listed(f"{protocol}://{folder}{pattern}", True, settings)
        assert found == [Entry(uri=f"{protocol}://{folder}/{key}") for key in expected], pattern
    with pytest.raises(SourceRefused) as refused:
        listed(f"{protocol}://{folder}/*.png", True, settings)
    assert refused.value.code == "source_missing"
    uri_options = datasets.storage_options(f"{protocol}://{folder}", settings)
    for cached in [{}, {"use_listings_cache": False}]:  # the instances listings may use
        instance, _ = fsspec.core.url_to_fs(f"{protocol}://{folder}", **uri_options, **cached)
        assert not [path for path in instance.dircache if path.startswith(folder)]


def test_a_folder_that_cannot_be_listed_refuses_the_source(root: Path, settings: Settings) -> None:
    """A subfolder whose listing fails refuses the source, with the reason. fsspec's
    ``find`` left such a folder out, and its files with it, saying nothing."""
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("one\n")
    unlistable(root / "texts")
    with pytest.raises(SourceRefused) as refused:
        listed(str(root / "texts"), False, settings)
    assert refused.value.code == "source_unreadable"
    assert "File name too long" in refused.value.message


def test_a_bucket_that_never_answers_refuses_the_source_within_seconds(tmp_path: Path) -> None:
    """A batch source gets the object store's time bounds (one botocore try per s3fs try):
    an S3 endpoint that takes connections and never answers held a listing for s3fs's 5
    tries of botocore's 5 (~50 s with a 2 s read timeout, ~25 min by default)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the backlog; nothing ever answers
        options = {
            "endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "key": "testing",
            "secret": "testing",
            "config_kwargs": {"read_timeout": 1},
        }
        settings = Settings(
            data_dir=tmp_path,
            object_store_url="s3://labels/objects",
            object_store_options=options,
            batch_allowed_prefixes=["s3://labels/datasets"],
        )
        started = time.monotonic()
        with pytest.raises(SourceRefused) as refused:
            listed("s3://labels/datasets/images/", True, settings)
        assert refused.value.code == "source_unreadable"
        assert time.monotonic() - started < 15


def test_entries_read_into_items(root: Path, settings: Settings) -> None:
    (root / "cat.jpg").write_bytes((DATA / "cat.jpg").read_bytes())
    (root / "doc.jpg").write_bytes((DATA / "not_an_image.pdf").read_bytes())
    [(image, data)] = read_entry(Entry(uri=str(root / "cat.jpg")), True, settings, "t", PROJECT)
    assert data == (DATA / "cat.jpg").read_bytes() and image.error is None
    assert image.object_key == f"t/{PROJECT}/{image.content_hash[:32]}.jpg"
    assert (image.width, image.height, image.media_type) == (451, 300, "image/jpeg")
    [(bad, data)] = read_entry(Entry(uri=str(root / "doc.jpg")), True, settings, "t", PROJECT)
    assert data is None and bad.object_key is None and bad.error is not None
    assert bad.error.startswith("unsupported_media_type: ")
    [(missing, _)] = read_entry(Entry(uri=str(root / "no.jpg")), True, settings, "t", PROJECT)
    assert missing.error is not None and missing.error.startswith("unreadable_file: ")
    assert missing.content_hash.startswith("source:")  # no content: a hash of where it was
    (root / "t.txt").write_text("fine\n" + "x" * 51 + "\n")
    texts = [
        item
        for item, _ in read_entry(Entry(uri=str(root / "t.txt")), False, settings, "t", PROJECT)
    ]
    assert [(t.text, t.error) for t in texts] == [
        ("fine", None),
        ("x" * 51, "text_too_long: 51 characters; the limit is 50"),
    ]
