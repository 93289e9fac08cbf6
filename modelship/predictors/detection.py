"""Object detectors: any Hugging Face detection model, and Ultralytics YOLOv8-style ONNX files.

Both return ``Detection`` boxes as ``[x, y, width, height]`` in pixels of the original image,
clipped to it and sorted best first, so clients never see model input coordinates.
"""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForObjectDetection,
    PreTrainedModel,
)

from modelship.core.config import Task
from modelship.core.errors import ConfigurationError, ModelNotReady
from modelship.core.messages import Detection, ItemOptions, Output, PreparedImage
from modelship.predictors.base import ImagePredictor

NUDENET_LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
"""Class names of nudenet's packaged ``320n.onnx``, in output order (from nudenet.py)."""

NUDENET_FILE = "320n.onnx"
DEFAULT_INPUT_SIZE = 320
NMS_IOU = 0.45
MAX_DETECTIONS = 300
"""Ultralytics' own cap; with a threshold near 0 a YOLO head proposes thousands of boxes."""


def _clipped_detection(
    label: str, score: float, xyxy: Sequence[float], width: int, height: int
) -> Detection:
    """A Detection in ``[x, y, w, h]``; boxes are clipped so they never leave the image."""
    x0, y0, x1, y1 = xyxy
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return Detection(label=label, score=score, box=(x0, y0, x1 - x0, y1 - y0))


class HFObjectDetector(ImagePredictor):
    """Any ``AutoModelForObjectDetection`` directory (DETR, Conditional DETR, RT-DETR, YOLOS...)."""

    task = Task.object_detection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Post-processing is duck-typed per model family, so the processor stays ``Any``.
        self._processor: Any = None
        self._model: PreTrainedModel | None = None
        self._id2label: dict[int, str] = {}
        self._takes_mask = False

    def load_processor(self) -> None:
        self._processor = AutoImageProcessor.from_pretrained(self.files.path)
        self._id2label = dict(AutoConfig.from_pretrained(self.files.path).id2label)

    def load(self) -> None:
        self.load_processor()
        model = AutoModelForObjectDetection.from_pretrained(self.files.path, dtype=self.dtype)
        self._model = model.to(self.device).eval()
        self._takes_mask = "pixel_mask" in inspect.signature(model.forward).parameters

    def labels(self) -> list[str] | None:
        return [self._id2label[i] for i in sorted(self._id2label)] or None

    def preprocess(self, raw: Image.Image, options: ItemOptions) -> PreparedImage:
        if self._processor is None:
            raise ModelNotReady("image processor not loaded")
        encoded = self._processor(images=raw, return_tensors="np")
        pixel_values = np.asarray(encoded["pixel_values"][0], dtype=np.float32)
        # The caller knows the media type of the bytes it decoded, and fills it in.
        return PreparedImage(pixel_values, raw.width, raw.height, "", options)

    def predict(self, batch: Sequence[PreparedImage]) -> list[Output]:
        outputs: list[Output] = [[] for _ in batch]
        for indices in self._groups(batch):
            items = [batch[i] for i in indices]
            for index, detections in zip(indices, self._run(items), strict=True):
                outputs[index] = detections
        return outputs

    def _groups(self, batch: Sequence[PreparedImage]) -> list[list[int]]:
        """Models without a pixel mask would see padding as image, so only equal shapes mix."""
        if self._takes_mask:
            return [list(range(len(batch)))]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(batch):
            by_shape.setdefault(item.pixel_values.shape, []).append(index)
        return list(by_shape.values())

    def _run(self, items: list[PreparedImage]) -> list[list[Detection]]:
        if self._model is None:
            raise ModelNotReady("model not loaded")
        inputs = self._pixel_inputs(items)
        with torch.inference_mode():
            raw = self._model(**inputs)
            # Post-processing in the model's half precision loses box accuracy.
            for key, value in raw.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    raw[key] = value.float()
            results = self._processor.post_process_object_detection(
                raw,
                threshold=min(item.options.score_threshold for item in items),
                target_sizes=[(item.height, item.width) for item in items],
            )
        return [self._detections(r, item) for r, item in zip(results, items, strict=True)]

    def _pixel_inputs(self, items: list[PreparedImage]) -> dict[str, torch.Tensor]:
        """Stack; differing shapes are zero-padded right/bottom with a DETR-style pixel mask."""
        shapes = [item.pixel_values.shape for item in items]
        if len(set(shapes)) == 1:
            pixels = np.stack([item.pixel_values for item in items])
            return {"pixel_values": torch.from_numpy(pixels).to(self.device, self.dtype)}
        height = max(shape[1] for shape in shapes)
        width = max(shape[2] for shape in shapes)
        pixels = np.zeros((len(items), shapes[0][0], height, width), dtype=np.float32)
        mask = np.zeros((len(items), height, width), dtype=np.int64)
        for row, (item, (_, h, w)) in enumerate(zip(items, shapes, strict=True)):
            pixels[row, :, :h, :w] = item.pixel_values
            mask[row, :h, :w] = 1
        return {
            "pixel_values": torch.from_numpy(pixels).to(self.device, self.dtype),
            "pixel_mask": torch.from_numpy(mask).to(self.device),
        }

    def _detections(self, result: dict[str, torch.Tensor], item: PreparedImage) -> list[Detection]:
        threshold = item.options.score_threshold
        detections = [
            _clipped_detection(self._id2label[label], score, box, item.width, item.height)
            for score, label, box in zip(
                result["scores"].tolist(),
                result["labels"].tolist(),
                result["boxes"].tolist(),
                strict=True,
            )
            if score >= threshold
        ]
        return sorted(detections, key=lambda d: d.score, reverse=True)


class YoloOnnxDetector(ImagePredictor):
    """An Ultralytics YOLOv8-style ONNX detector; the packaged default is nudenet's 320n.

    Expects input ``[batch, 3, H, W]`` RGB in [0, 1] and output ``[batch, 4 + classes, N]``
    with ``cx, cy, w, h`` in input pixels. Images are padded right/bottom to a square first,
    as nudenet was trained, so mapping boxes back is a single scale per axis.
    """

    task = Task.object_detection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names: list[str] | None = None
        self._input_name = ""
        self._input_hw = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        self._session: ort.InferenceSession | None = None

    def load_processor(self) -> None:
        # Reading the input shape and metadata needs a session: there is no `onnx` package.
        probe = ort.InferenceSession(str(self.files.path), providers=["CPUExecutionProvider"])
        model_input = probe.get_inputs()[0]
        metadata = probe.get_modelmeta().custom_metadata_map
        self._input_name = model_input.name
        self._input_hw = _input_size(model_input.shape, metadata)
        self._names = self._resolve_names(metadata)

    def _resolve_names(self, metadata: dict[str, str]) -> list[str]:
        """nudenet's names for its file, else the configured labels, else Ultralytics' own."""
        if self.files.path.name == NUDENET_FILE:
            return list(NUDENET_LABELS)
        if self.config.labels:
            return [label.name for label in self.config.labels]
        if "names" in metadata:
            names = ast.literal_eval(metadata["names"])
            return [str(names[i]) for i in sorted(names)]
        raise ConfigurationError(
            f"model {self.config.name!r}: a YOLO ONNX file needs 'labels' naming its classes"
        )

    def load(self) -> None:
        self.load_processor()
        options = ort.SessionOptions()
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in (
            ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(self.files.path), options, providers=providers)
        # One warm-up run also proves the label count matches the head.
        height, width = self._input_hw
        blank = np.zeros((1, 3, height, width), dtype=np.float32)
        classes = session.run(None, {self._input_name: blank})[0].shape[1] - 4
        if classes != len(self._names or []):
            raise ConfigurationError(
                f"model {self.config.name!r} outputs {classes} classes "
                f"but {len(self._names or [])} labels are configured"
            )
        self._session = session

    def labels(self) -> list[str] | None:
        return self._names

    def preprocess(self, raw: Image.Image, options: ItemOptions) -> PreparedImage:
        if self._names is None:
            raise ModelNotReady("input size not read yet: call load_processor()")
        height, width = self._input_hw
        side = max(raw.width, raw.height)
        square = np.zeros((side, side, 3), dtype=np.uint8)
        square[: raw.height, : raw.width] = np.asarray(raw.convert("RGB"))
        resized = cv2.resize(square, (width, height), interpolation=cv2.INTER_LINEAR)
        pixels = resized.transpose(2, 0, 1).astype(np.float32) / 255.0
        scale = (side / width, side / height)
        return PreparedImage(pixels, raw.width, raw.height, "", options, extra={"scale": scale})

    def predict(self, batch: Sequence[PreparedImage]) -> list[Output]:
        if self._session is None or self._names is None:
            raise ModelNotReady("model not loaded")
        pixels = np.stack([item.pixel_values for item in batch])
        raw = self._session.run(None, {self._input_name: pixels})[0]
        return [self._detections(rows.T, item) for rows, item in zip(raw, batch, strict=True)]

    def _detections(self, rows: np.ndarray, item: PreparedImage) -> list[Detection]:
        """``rows`` is ``[N, 4 + classes]``: threshold, map back, NMS, best first."""
        assert self._names is not None
        class_scores = rows[:, 4:]
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        keep = scores >= item.options.score_threshold
        if not keep.any():
            return []
        rows, classes, scores = rows[keep], classes[keep], scores[keep]
        scale_x, scale_y = item.extra["scale"]
        cx, cy, w, h = (rows[:, i] for i in range(4))
        x0 = np.clip((cx - w / 2) * scale_x, 0, item.width)
        y0 = np.clip((cy - h / 2) * scale_y, 0, item.height)
        x1 = np.clip((cx + w / 2) * scale_x, 0, item.width)
        y1 = np.clip((cy + h / 2) * scale_y, 0, item.height)
        boxes = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        kept = cv2.dnn.NMSBoxes(
            boxes.tolist(), scores.tolist(), item.options.score_threshold, NMS_IOU
        )
        order = sorted(np.asarray(kept, dtype=np.int64).reshape(-1), key=lambda i: -scores[i])
        return [
            Detection(
                label=self._names[classes[i]],
                score=float(scores[i]),
                box=(float(x0[i]), float(y0[i]), float(boxes[i, 2]), float(boxes[i, 3])),
            )
            for i in order[:MAX_DETECTIONS]
        ]


def _input_size(shape: Sequence[Any], metadata: dict[str, str]) -> tuple[int, int]:
    """(height, width): the static input shape, else Ultralytics' ``imgsz``, else 320."""
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return shape[2], shape[3]
    if "imgsz" in metadata:
        height, width = ast.literal_eval(metadata["imgsz"])
        return int(height), int(width)
    return DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE
