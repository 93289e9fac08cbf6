"""HFTextClassifier: batching by length must not change scores or the order of results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from modelship.core.config import ModelConfig, Task
from modelship.core.messages import ItemOptions, LabelScore
from modelship.predictors.store import ModelFiles, content_version
from modelship.predictors.text_classification import HFTextClassifier

TEXT_LABELS = ["negative", "neutral", "positive"]  # as tiny_text_classifier_dir configures them
TEXTS = [
    "john lives in paris and works in london " * 12,
    "good",
    "mary is very bad, the city is big!",
    "walking",
    "new york is a big city. " * 5,
]


def _classifier(path: Path, max_length: int = 256) -> HFTextClassifier:
    config = ModelConfig(
        name="sentiment", task=Task.text_classification, source=str(path), max_length=max_length
    )
    predictor = HFTextClassifier(config, ModelFiles(path, content_version(path)))
    predictor.load()
    return predictor


@pytest.fixture(scope="module")
def classifier(tiny_text_classifier_dir: Path) -> HFTextClassifier:
    return _classifier(tiny_text_classifier_dir)


def _assert_close(got: list[LabelScore], want: list[LabelScore]) -> None:
    assert [s.label for s in got] == [s.label for s in want]
    assert [s.score for s in got] == pytest.approx([s.score for s in want], abs=1e-5)


def test_labels_in_id_order(classifier: HFTextClassifier) -> None:
    assert classifier.labels() == TEXT_LABELS


def test_preprocess_truncates_without_padding(tiny_text_classifier_dir: Path) -> None:
    short = _classifier(tiny_text_classifier_dir, max_length=16)
    options = ItemOptions()
    assert len(short.preprocess(TEXTS[0], options)) == 16
    assert len(short.preprocess("good", options)) == 3  # [CLS] good [SEP]


def test_batch_matches_single_items_in_input_order(classifier: HFTextClassifier) -> None:
    options = ItemOptions(top_k=3)
    prepared = [classifier.preprocess(text, options) for text in TEXTS]
    assert len(prepared[0]) > 10 * len(prepared[1])
    batched = classifier.predict(prepared)
    assert len(batched) == len(TEXTS)
    singles = [classifier.predict([item])[0] for item in prepared]
    for got, want in zip(batched, singles, strict=True):
        assert isinstance(got, list)
        assert isinstance(want, list)
        _assert_close(got, want)  # type: ignore[arg-type]
    # The texts really differ, so a permutation of results would have been caught.
    assert len({tuple(s.score for s in result) for result in singles}) == len(TEXTS)  # type: ignore[union-attr]


def test_top_k_is_per_item_and_scores_are_a_softmax(classifier: HFTextClassifier) -> None:
    one, every = ItemOptions(top_k=1), ItemOptions(top_k=10)
    got = classifier.predict(
        [classifier.preprocess("good", one), classifier.preprocess("good", every)]
    )
    assert len(got[0]) == 1
    assert len(got[1]) == len(TEXT_LABELS)
    scores = [s.score for s in got[1]]  # type: ignore[union-attr]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert got[0][0] == got[1][0]


def test_multi_label_models_use_sigmoids(tiny_text_classifier_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "multi"
    shutil.copytree(tiny_text_classifier_dir, path)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    classifier = _classifier(path)
    item = classifier.preprocess("mary is good", ItemOptions(top_k=10))
    (got,) = classifier.predict([item])
    assert classifier._model is not None
    with torch.inference_mode():
        logits = classifier._model(input_ids=torch.tensor([item.input_ids])).logits[0]
    want = {TEXT_LABELS[i]: float(v) for i, v in enumerate(logits.sigmoid())}
    assert {s.label: s.score for s in got} == pytest.approx(want, abs=1e-6)  # type: ignore[union-attr]


def test_packed_scores_match_the_models_own_forward(classifier: HFTextClassifier) -> None:
    """The texts together, packed (``PackedEncoder``), against each text alone through the
    Hugging Face model: no padding anywhere, pooler and classifier included."""
    assert classifier._packed is not None
    prepared = [classifier.preprocess(text, ItemOptions(top_k=3)) for text in TEXTS]
    model = classifier._model
    assert model is not None
    with torch.inference_mode():
        for item, got in zip(prepared, classifier.predict(prepared), strict=True):
            logits = model(input_ids=torch.tensor([item.input_ids])).logits[0]
            want = dict(zip(TEXT_LABELS, logits.softmax(-1).tolist(), strict=True))
            assert {s.label: s.score for s in got} == pytest.approx(want, abs=1e-5)  # type: ignore[union-attr]
