from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelship.core.config import ModelConfig, Task
from modelship.core.inputs import decode_image
from modelship.core.messages import ItemOptions
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, build_predictor
from modelship.predictors.image_classification import (
    EfficientNetLite0,
    HFImageClassifier,
    fold_for_inference,
)
from modelship.predictors.prepare import prepare_image
from modelship.predictors.store import content_version
from tests.conftest import EFFICIENTNET, payload


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory: pytest.TempPathFactory) -> EfficientNetLite0:
    files = ModelStore(tmp_path_factory.mktemp("store")).resolve(EFFICIENTNET.source)
    predictor = build_predictor(EFFICIENTNET, files)
    assert isinstance(predictor, EfficientNetLite0)
    predictor.load()
    return predictor


def _label(predictor: EfficientNetLite0, name: str, settings: Settings, k: int = 3) -> list[str]:
    image = decode_image(payload(name), settings).image
    item = predictor.preprocess(image, ItemOptions(top_k=k))
    return [score.label for score in predictor.predict([item])[0]]


def test_the_cat_photo_is_a_cat(efficientnet: EfficientNetLite0, settings: Settings) -> None:
    labels = _label(efficientnet, "cat.jpg", settings)
    assert labels[0] == "Egyptian cat"
    assert all("cat" in label for label in labels)


def test_the_coffee_photo_is_espresso(efficientnet: EfficientNetLite0, settings: Settings) -> None:
    labels = _label(efficientnet, "coffee.jpg", settings)
    assert labels[0] == "espresso"
    assert "cup" in labels


def test_a_large_photo_is_decoded_smaller_with_the_same_labels_and_its_own_size(
    efficientnet: EfficientNetLite0, settings: Settings
) -> None:
    cat = Image.open(io.BytesIO(payload("cat.jpg")))
    buffer = io.BytesIO()
    cat.resize((1804, 1200), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    large = buffer.getvalue()
    assert decode_image(large, settings, efficientnet.input_side).image.size == (451, 300)
    item = prepare_image(efficientnet, large, ItemOptions(top_k=3), settings)
    assert (item.width, item.height) == (1804, 1200)
    full = efficientnet.preprocess(decode_image(large, settings).image, ItemOptions(top_k=3))
    labels = [[s.label for s in out] for out in efficientnet.predict([item, full])]
    assert labels[0][0] == labels[1][0] == "Egyptian cat"


def test_folding_keeps_the_function_in_fewer_ops(
    efficientnet: EfficientNetLite0, settings: Settings
) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(torch.load(efficientnet.files.path, weights_only=True))
    original.eval()
    folded = fold_for_inference(copy.deepcopy(original))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not any(isinstance(m, torch.nn.ZeroPad2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.ZeroPad2d) for m in original.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in original.modules())
    item = efficientnet.preprocess(decode_image(payload("cat.jpg"), settings).image, ItemOptions())
    pixels = efficientnet.pixels([item])
    with torch.inference_mode():
        assert torch.allclose(folded(pixels), original(pixels), atol=1e-4)


def test_images_travel_as_bytes_and_reach_the_model_as_before(
    efficientnet: EfficientNetLite0, settings: Settings
) -> None:
    """Prepared images are 8-bit (a quarter of the bytes between deployments); scaled on
    the model's side and run channels-last, they give the original model's logits on the
    float pixels the predictor used to send."""
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(torch.load(efficientnet.files.path, weights_only=True))
    image = decode_image(payload("coffee.jpg"), settings).image
    item = efficientnet.preprocess(image, ItemOptions())
    assert item.pixel_values.dtype == np.uint8
    assert item.pixel_values.nbytes == 224 * 224 * 3
    floats = np.asarray(item.pixel_values, dtype=np.float32) / 127.5 - 1.0
    before = torch.from_numpy(floats.transpose(2, 0, 1).copy()[None])
    pixels = efficientnet.pixels([item])
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(pixels, before)
    with torch.inference_mode():
        served = torch.nn.functional.softmax(efficientnet._logits(pixels), -1)
        expected = torch.nn.functional.softmax(original.eval()(before), -1)
    assert torch.allclose(served, expected, atol=1e-5)


def test_the_exif_rotated_cat_is_still_a_cat(
    efficientnet: EfficientNetLite0, settings: Settings
) -> None:
    assert _label(efficientnet, "cat_exif_rotated.jpg", settings)[0] == "Egyptian cat"


def test_batches_equal_single_predictions(
    efficientnet: EfficientNetLite0, settings: Settings
) -> None:
    images = [decode_image(payload(n), settings).image for n in ("cat.jpg", "coffee.jpg")]
    items = [efficientnet.preprocess(image, ItemOptions(top_k=5)) for image in images]
    together = efficientnet.predict(items)
    alone = [efficientnet.predict([item])[0] for item in items]
    for batched, single in zip(together, alone, strict=True):
        assert [s.label for s in batched] == [s.label for s in single]
        assert [s.score for s in batched] == pytest.approx([s.score for s in single], abs=1e-4)
    assert len(efficientnet.labels()) == 1000


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        id2label={0: "ant", 1: "bee", 2: "wasp"},
        label2id={"ant": 0, "bee": 1, "wasp": 2},
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_any_hf_image_classifier_directory(tiny_vit_dir: Path) -> None:
    config = ModelConfig(name="tiny-vit", task=Task.image_classification, source=str(tiny_vit_dir))
    predictor = build_predictor(config, ModelStore(tiny_vit_dir).resolve(str(tiny_vit_dir)))
    assert isinstance(predictor, HFImageClassifier)
    predictor.load()
    assert predictor.version == content_version(tiny_vit_dir)
    images = [Image.new("RGB", (40, 90), "red"), Image.open(io.BytesIO(payload("cat.jpg")))]
    items = [predictor.preprocess(image.convert("RGB"), ItemOptions(top_k=2)) for image in images]
    outputs = predictor.predict(items)
    assert [len(output) for output in outputs] == [2, 2]
    for output in outputs:
        assert {score.label for score in output} <= {"ant", "bee", "wasp"}
        assert output[0].score >= output[1].score
    assert predictor.labels() == ["ant", "bee", "wasp"]


def test_a_process_decodes_at_most_its_limit_of_images_at_once(
    efficientnet: EfficientNetLite0, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Lock

    import modelship.predictors.prepare as prepare

    in_flight, peak, lock = 0, 0, Lock()

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return decode_image(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(prepare, "decode_image", counted)
    limited = settings.model_copy(update={"max_concurrent_decodes": 2})
    big = io.BytesIO()
    Image.effect_noise((1500, 1500), 60).convert("RGB").save(big, format="PNG")
    with ThreadPoolExecutor(12) as pool:
        done = list(
            pool.map(
                lambda _: prepare_image(efficientnet, big.getvalue(), ItemOptions(), limited),
                range(24),
            )
        )
    assert len(done) == 24 and all(item.width == 1500 for item in done)
    assert peak == 2
