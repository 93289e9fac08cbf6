from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelship.core.config import LabelSpec, ModelConfig, Task
from modelship.core.errors import InvalidInput
from modelship.core.messages import ItemOptions
from modelship.predictors import ModelStore, build_predictor
from modelship.predictors.packed import PackedEncoder
from modelship.predictors.zero_shot import EmbeddingZeroShotClassifier

TOPICS = (LabelSpec(name="sports"), LabelSpec(name="cooking"), LabelSpec(name="finance"))


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingZeroShotClassifier:
    config = ModelConfig(
        name="minilm", task=Task.zero_shot_text_classification, source="packaged:all-minilm-l6-v2"
    )
    files = ModelStore(tmp_path_factory.mktemp("store")).resolve(config.source)
    predictor = build_predictor(config, files)
    assert isinstance(predictor, EmbeddingZeroShotClassifier)
    predictor.load()
    return predictor


def _top(predictor: EmbeddingZeroShotClassifier, texts: list[str], labels: tuple[LabelSpec, ...]):
    items = [
        predictor.preprocess(text, ItemOptions(top_k=len(labels), labels=labels)) for text in texts
    ]
    return predictor.predict(items)


def test_zero_shot_topics(minilm: EmbeddingZeroShotClassifier) -> None:
    texts = [
        "The football team won the championship match last night.",
        "Simmer the onions in butter until golden, then add the garlic.",
        "The central bank raised interest rates and bond yields jumped.",
    ]
    outputs = _top(minilm, texts, TOPICS)
    assert [output[0].label for output in outputs] == ["sports", "cooking", "finance"]
    for output in outputs:
        assert sum(score.score for score in output) == pytest.approx(1.0, abs=1e-4)


def test_few_shot_examples_teach_labels_with_meaningless_names(
    minilm: EmbeddingZeroShotClassifier,
) -> None:
    texts = ["The goalkeeper saved a penalty in extra time.", "Whisk the eggs and fold in flour."]
    bare = (LabelSpec(name="label-a"), LabelSpec(name="label-b"))
    taught = (
        LabelSpec(name="label-a", examples=["the team won the match", "a great goal"]),
        LabelSpec(name="label-b", examples=["bake the cake for an hour", "a recipe with butter"]),
    )
    taught_out = _top(minilm, texts, taught)
    assert [output[0].label for output in taught_out] == ["label-a", "label-b"]
    bare_out = _top(minilm, texts, bare)
    margin = [abs(o[0].score - o[1].score) for o in bare_out]
    taught_margin = [abs(o[0].score - o[1].score) for o in taught_out]
    assert all(t > b for t, b in zip(taught_margin, margin, strict=True))


def test_batches_of_mixed_lengths_equal_single_predictions(
    minilm: EmbeddingZeroShotClassifier,
) -> None:
    texts = ["short", "a much longer sentence about football " * 8, "medium length text here"]
    together = _top(minilm, texts, TOPICS)
    for text, batched in zip(texts, together, strict=True):
        (alone,) = _top(minilm, [text], TOPICS)
        assert [s.label for s in batched] == [s.label for s in alone]
        assert [s.score for s in batched] == pytest.approx([s.score for s in alone], abs=1e-4)


def test_label_sets_can_differ_within_a_batch(minilm: EmbeddingZeroShotClassifier) -> None:
    other = (LabelSpec(name="weather"), LabelSpec(name="music"))
    items = [
        minilm.preprocess("It will rain all weekend.", ItemOptions(top_k=1, labels=other)),
        minilm.preprocess("The chef grilled the fish.", ItemOptions(top_k=1, labels=TOPICS)),
    ]
    first, second = minilm.predict(items)
    assert (first[0].label, second[0].label) == ("weather", "cooking")


def test_labels_are_required(minilm: EmbeddingZeroShotClassifier) -> None:
    with pytest.raises(InvalidInput) as caught:
        minilm.preprocess("no labels anywhere", ItemOptions())
    assert caught.value.code == "labels_required"


def test_the_probe_runs_without_configured_labels(minilm: EmbeddingZeroShotClassifier) -> None:
    item = minilm.preprocess(minilm.probe(), minilm.probe_options())
    assert len(minilm.predict([item])[0]) == 2


def test_packed_embeddings_match_the_models_own_forward(
    minilm: EmbeddingZeroShotClassifier,
) -> None:
    """Texts of 1 to ~300 words embedded together, packed, against each text alone
    through the Hugging Face model (no padding anywhere), mean-pooled."""
    model = minilm._model
    assert PackedEncoder.supports(model)
    words = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near")
    words += ("the", "river", "bank")
    texts = [" ".join(words[i % len(words)] for i in range(n)) for n in (1, 3, 40, 7, 300, 12)]
    items = [minilm.preprocess(text, ItemOptions(labels=TOPICS)) for text in texts]
    packed = minilm.embed(items)
    with torch.inference_mode():
        for item, vector in zip(items, packed, strict=True):
            hidden = model(input_ids=torch.tensor([item.input_ids])).last_hidden_state[0]
            alone = F.normalize(hidden.mean(0), dim=-1)
            assert torch.allclose(vector, alone, atol=1e-5)


def test_a_max_length_past_the_models_positions_truncates_to_them(
    minilm: EmbeddingZeroShotClassifier,
) -> None:
    """max_length: 1024 on MiniLM (512 positions): every text over 512 tokens failed with
    422 unprocessable_item (IndexError in the position embeddings), after its batch ran
    twice. Text predictors truncate to what the model takes."""
    config = minilm.config.model_copy(update={"max_length": 1024})
    long = build_predictor(config, minilm.files)
    assert isinstance(long, EmbeddingZeroShotClassifier)
    long.load()
    (output,) = _top(long, ["word " * 700], TOPICS)
    assert len(output) == len(TOPICS)
