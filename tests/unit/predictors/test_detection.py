"""Detectors: boxes in original-image pixels, batching that does not change results, and the
packaged nudenet YOLO model finding a real face."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment
from skimage import data

from modelship.core.config import LabelSpec, ModelConfig, Task
from modelship.core.errors import ConfigurationError
from modelship.core.messages import Detection, ItemOptions
from modelship.predictors.detection import NUDENET_LABELS, HFObjectDetector, YoloOnnxDetector
from modelship.predictors.store import ModelFiles, ModelStore, content_version

DETR_LABELS = ["cat", "dog", "bird"]  # as tiny_detr_dir configures them
ALL = ItemOptions(score_threshold=0.0)
SIZES = [(80, 50), (60, 120), (64, 64), (37, 91)]  # (width, height)


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _assert_inside(detections: list[Detection], width: int, height: int) -> None:
    for d in detections:
        x, y, w, h = d.box
        assert 0 <= x <= x + w <= width + 1e-4, d
        assert 0 <= y <= y + h <= height + 1e-4, d


def _assert_same(left: list[Detection], right: list[Detection], px: float, score: float) -> None:
    """Same detections up to tolerance. Near-tied detections may swap places, so pair them
    by the best one-to-one assignment first."""
    assert len(left) == len(right)
    if not left:
        return
    cost = np.array(
        [
            [
                np.abs(np.subtract(a.box, b.box)).max() / px + abs(a.score - b.score) / score
                for b in right
            ]
            for a in left
        ]
    )
    rows, cols = linear_sum_assignment(cost)
    for i, j in zip(rows, cols, strict=True):
        a, b = left[i], right[j]
        assert a.label == b.label, (a, b)
        assert np.allclose(a.box, b.box, atol=px), (a, b)
        assert a.score == pytest.approx(b.score, abs=score), (a, b)


@pytest.fixture(scope="module")
def detr(tiny_detr_dir: Path) -> HFObjectDetector:
    config = ModelConfig(name="detr", task=Task.object_detection, source=str(tiny_detr_dir))
    predictor = HFObjectDetector(config, ModelFiles(tiny_detr_dir, content_version(tiny_detr_dir)))
    predictor.load()
    return predictor


def test_detr_labels_and_original_size(detr: HFObjectDetector) -> None:
    assert detr.labels() == DETR_LABELS
    prepared = detr.preprocess(_images([(80, 50)])[0], ALL)
    assert (prepared.width, prepared.height) == (80, 50)
    assert prepared.pixel_values.shape[0] == 3
    assert max(prepared.pixel_values.shape[1:]) <= 96


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    """The tiny DETR's scaled-up random weights amplify float noise enough that its scores
    move with the thread count (by 0.034 at one thread, measured), which other code in the
    process may change: pin it, so the tolerance below measures batching alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_torch_threads")
def test_detr_mixed_sizes_batch_matches_single_items(detr: HFObjectDetector) -> None:
    images = _images(SIZES)
    prepared = [detr.preprocess(image, ALL) for image in images]
    assert len({p.pixel_values.shape for p in prepared}) > 1
    batched = detr.predict(prepared)
    assert len(batched) == len(images)
    for image, item, together in zip(images, prepared, batched, strict=True):
        alone = detr.predict([item])[0]
        assert len(together) == 10  # num_queries, all kept at threshold 0
        _assert_inside(together, image.width, image.height)
        # Convolutions see a little past each image's edge into the padding, so batching
        # moves boxes slightly (a bug such as a missing pixel mask moves them by tens of %).
        _assert_same(together, alone, px=0.04 * max(image.size), score=0.03)
        assert [d.score for d in together] == sorted((d.score for d in together), reverse=True)


def test_detr_without_pixel_mask_groups_by_shape(
    detr: HFObjectDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = [detr.preprocess(image, ALL) for image in _images(SIZES + SIZES[:2], seed=3)]
    expected = [detr.predict([item])[0] for item in prepared]
    monkeypatch.setattr(detr, "_takes_mask", False)
    for got, want in zip(detr.predict(prepared), expected, strict=True):
        _assert_same(got, want, px=1e-3, score=1e-5)


def test_detr_boxes_are_the_processors_xyxy_as_xywh(detr: HFObjectDetector) -> None:
    image = _images([(90, 40)], seed=5)[0]
    processor, model = detr._processor, detr._model
    assert model is not None
    inputs = processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"])
    (reference,) = processor.post_process_object_detection(
        outputs, threshold=0.0, target_sizes=[(image.height, image.width)]
    )
    expected = []
    for score, label, (x0, y0, x1, y1) in zip(
        reference["scores"].tolist(),
        reference["labels"].tolist(),
        reference["boxes"].tolist(),
        strict=True,
    ):
        x0, x1 = np.clip([x0, x1], 0, image.width)
        y0, y1 = np.clip([y0, y1], 0, image.height)
        box = (x0, y0, x1 - x0, y1 - y0)
        expected.append(Detection(label=DETR_LABELS[label], score=score, box=box))
    got = detr.predict([detr.preprocess(image, ALL)])[0]
    _assert_same(got, expected, px=1e-3, score=1e-5)


def test_detr_score_threshold_is_per_item(detr: HFObjectDetector) -> None:
    image = _images([(70, 70)], seed=7)[0]
    every = detr.predict([detr.preprocess(image, ALL)])[0]
    threshold = float(np.median([d.score for d in every]))
    strict = ItemOptions(score_threshold=threshold)
    got = detr.predict([detr.preprocess(image, strict), detr.preprocess(image, ALL)])
    assert 0 < len(got[0]) < len(every)
    assert all(d.score >= threshold for d in got[0])
    assert len(got[1]) == len(every)


# --- the packaged nudenet YOLOv8 ONNX model ------------------------------------------


@pytest.fixture(scope="module")
def nudenet_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return ModelStore(tmp_path_factory.mktemp("store")).resolve("packaged:nudenet-320n")


@pytest.fixture(scope="module")
def yolo(nudenet_files: ModelFiles) -> YoloOnnxDetector:
    config = ModelConfig(name="nudenet", task=Task.object_detection, source="packaged:nudenet-320n")
    predictor = YoloOnnxDetector(config, nudenet_files)
    predictor.load()
    return predictor


def _face(detections: list[Detection]) -> tuple[float, float, float, float]:
    faces = [d for d in detections if d.label == "FACE_FEMALE"]
    assert faces, detections
    x, y, w, h = faces[0].box
    return x, y, x + w, y + h


def test_nudenet_finds_the_astronauts_face(yolo: YoloOnnxDetector) -> None:
    assert yolo.labels() == list(NUDENET_LABELS)
    astronaut = Image.fromarray(data.astronaut())
    canvas = Image.new("RGB", (900, 600), (128, 128, 128))
    canvas.paste(astronaut, (0, 0))
    options = ItemOptions(score_threshold=0.4)
    prepared = [yolo.preprocess(image, options) for image in (astronaut, canvas)]
    on_its_own, on_canvas = yolo.predict(prepared)
    _assert_inside(on_its_own, 512, 512)
    _assert_inside(on_canvas, 900, 600)
    x0, y0, x1, y1 = _face(on_its_own)
    # The face is roughly x 175-270, y 85-180 in skimage's 512x512 astronaut.
    assert 150 < x0 < (x0 + x1) / 2 < x1 < 300
    assert 60 < y0 < (y0 + y1) / 2 < y1 < 200
    assert np.allclose(_face(on_canvas), (x0, y0, x1, y1), atol=8)
    assert all(d.score >= 0.4 for d in on_its_own + on_canvas)


def test_nudenet_batch_matches_single_items(yolo: YoloOnnxDetector) -> None:
    images = [Image.fromarray(data.astronaut()), *_images([(200, 90), (60, 150)])]
    options = ItemOptions(score_threshold=0.05)
    prepared = [yolo.preprocess(image, options) for image in images]
    batched = yolo.predict(prepared)
    for image, item, together in zip(images, prepared, batched, strict=True):
        _assert_inside(together, image.width, image.height)
        _assert_same(together, yolo.predict([item])[0], px=1e-2, score=1e-4)
        assert [d.score for d in together] == sorted((d.score for d in together), reverse=True)


def _renamed_copy(files: ModelFiles, tmp_path: Path) -> ModelFiles:
    path = tmp_path / "detector.onnx"
    shutil.copy(files.path, path)
    return ModelFiles(path, files.version)


def test_yolo_other_files_use_configured_labels(nudenet_files: ModelFiles, tmp_path: Path) -> None:
    files = _renamed_copy(nudenet_files, tmp_path)
    names = [f"class-{i}" for i in range(18)]
    labels = [LabelSpec(name=name) for name in names]
    config = ModelConfig(name="yolo", task=Task.object_detection, source="x", labels=labels)
    predictor = YoloOnnxDetector(config, files)
    predictor.load()
    assert predictor.labels() == names
    face = Image.fromarray(data.astronaut())
    found = predictor.predict([predictor.preprocess(face, ItemOptions(score_threshold=0.4))])
    assert "class-1" in {d.label for d in found[0]}  # FACE_FEMALE's index


def test_yolo_label_count_must_match_the_model(nudenet_files: ModelFiles, tmp_path: Path) -> None:
    files = _renamed_copy(nudenet_files, tmp_path)
    labels = [LabelSpec(name="a"), LabelSpec(name="b")]
    config = ModelConfig(name="yolo", task=Task.object_detection, source="x", labels=labels)
    with pytest.raises(ConfigurationError):
        YoloOnnxDetector(config, files).load()
