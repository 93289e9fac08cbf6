from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import pytest

from modelship.core.errors import ConfigurationError
from modelship.predictors.store import ModelStore, content_version


def test_packaged_models_resolve_to_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    effnet = store.resolve("packaged:efficientnet-lite0")
    assert effnet.path.is_file()
    # torch hub names the file by its sha256 prefix: the content hash must agree.
    assert effnet.version.startswith("sha256:57934424")
    assert (store.resolve("packaged:all-minilm-l6-v2").path / "config.json").exists()


def test_unknown_sources_are_configuration_errors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ConfigurationError, match="unknown packaged"):
        store.resolve("packaged:nope")
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.resolve(str(tmp_path / "missing"))


def _model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_version_is_a_hash_of_the_weights_only(tmp_path: Path) -> None:
    first = _model_dir(tmp_path / "a", b"weights-1")
    same = _model_dir(tmp_path / "b", b"weights-1")
    (same / "config.json").write_text('{"other": "config"}')
    changed = _model_dir(tmp_path / "c", b"weights-2")
    assert content_version(first) == content_version(same)
    assert content_version(first) != content_version(changed)


def test_remote_models_are_fetched_once_and_cached(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/models/m1/config.json", b"{}")
    fs.pipe("/models/m1/model.safetensors", b"remote-weights")
    store = ModelStore(tmp_path / "cache")
    fetched = store.resolve("memory://models/m1")
    assert (fetched.path / "model.safetensors").read_bytes() == b"remote-weights"
    fs.rm("/models/m1", recursive=True)  # gone remotely: the cached copy still serves
    again = store.resolve("memory://models/m1")
    assert again == fetched
    assert fetched.version == content_version(fetched.path)


def test_a_remote_single_file_resolves_to_that_file(tmp_path: Path) -> None:
    fsspec.filesystem("memory").pipe("/models/net.onnx", b"onnx-bytes")
    resolved = ModelStore(tmp_path).resolve("memory://models/net.onnx")
    assert resolved.path.name == "net.onnx"
    assert resolved.path.read_bytes() == b"onnx-bytes"


def test_a_model_folder_on_gcs_is_fetched(
    tmp_path: Path, gcs_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gs:// as a model source, with the environment's credentials and endpoint, as a
    replica on GKE would fetch it (here: the emulator, anonymously)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_options["endpoint_url"])
    fs = fsspec.filesystem("gs", **gcs_options)
    fs.pipe("labels/models/m2/config.json", b"{}")
    fs.pipe("labels/models/m2/model.safetensors", b"weights-on-gcs")
    fetched = ModelStore(tmp_path).resolve("gs://labels/models/m2/")
    assert (fetched.path / "model.safetensors").read_bytes() == b"weights-on-gcs"
    assert fetched.version == content_version(fetched.path)
