"""HFTokenClassifier: entity grouping, character offsets, and sub-word merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from modelship.core.config import ModelConfig, Task
from modelship.core.messages import Entity, ItemOptions
from modelship.predictors.store import ModelFiles, content_version
from modelship.predictors.token_classification import (
    HFTokenClassifier,
    TaggedToken,
    group_entities,
    split_tag,
)

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # as tiny_ner_dir configures them
OPTIONS = ItemOptions()


def _tagger(path: Path) -> HFTokenClassifier:
    config = ModelConfig(name="ner", task=Task.token_classification, source=str(path))
    predictor = HFTokenClassifier(config, ModelFiles(path, content_version(path)))
    predictor.load()
    return predictor


def _entities(tagger: HFTokenClassifier, text: str) -> list[Entity]:
    (result,) = tagger.predict([tagger.preprocess(text, OPTIONS)])
    assert all(isinstance(e, Entity) for e in result)
    return result  # type: ignore[return-value]


@pytest.fixture(scope="module")
def forced(tiny_ner_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the tiny model whose classifier picks one label for every token."""
    paths = {}
    for label in ("B-PER", "I-PER", "O"):
        model = AutoModelForTokenClassification.from_pretrained(tiny_ner_dir)
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([3.0 * (x == label) for x in NER_LABELS]))
        path = tmp_path_factory.mktemp(f"forced-{label}")
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(tiny_ner_dir).save_pretrained(path)
        paths[label] = path
    return paths


def _tok(start: int, end: int, label: str, score: float = 1.0, cont: bool = False) -> TaggedToken:
    return TaggedToken(start, end, label, score, cont)


def _spans(entities: list[Entity]) -> list[tuple[str, str]]:
    return [(e.label, e.text) for e in entities]


def test_split_tag() -> None:
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("I-LOC") == ("I", "LOC")
    assert split_tag("PER") == ("I", "PER")
    assert split_tag("O") == ("I", "O")


def test_group_entities_on_bio_tags() -> None:
    text = "Ann Lee met Bob in New York , Paris"
    tokens = [
        _tok(0, 0, "B-LOC"),  # [CLS]: zero-width, skipped whatever its label
        _tok(0, 3, "B-PER", 0.9),
        _tok(4, 7, "I-PER", 0.7),
        _tok(8, 11, "O"),
        _tok(12, 15, "I-PER"),  # I- after O starts a new entity
        _tok(16, 18, "O"),
        _tok(19, 22, "B-LOC"),
        _tok(23, 27, "I-LOC"),
        _tok(28, 29, "I-PER"),  # type change ends LOC
        _tok(30, 35, "B-LOC"),
        _tok(0, 0, "I-LOC"),  # [SEP]
    ]
    entities = group_entities(tokens, text)
    assert _spans(entities) == [
        ("PER", "Ann Lee"),
        ("PER", "Bob"),
        ("LOC", "New York"),
        ("PER", ","),
        ("LOC", "Paris"),
    ]
    assert entities[0].score == pytest.approx(0.8)
    assert all(text[e.start : e.end] == e.text for e in entities)


def test_group_entities_b_starts_a_new_entity_of_the_same_type() -> None:
    tokens = [_tok(0, 3, "B-PER"), _tok(4, 7, "B-PER"), _tok(8, 11, "I-PER")]
    assert _spans(group_entities(tokens, "Ann Bob Lee")) == [("PER", "Ann"), ("PER", "Bob Lee")]


def test_group_entities_without_bio_prefixes_merges_neighbours() -> None:
    tokens = [_tok(0, 3, "PER"), _tok(4, 7, "PER"), _tok(8, 10, "O"), _tok(11, 16, "LOC")]
    assert _spans(group_entities(tokens, "Ann Lee in Paris")) == [
        ("PER", "Ann Lee"),
        ("LOC", "Paris"),
    ]


def test_group_entities_keeps_words_whole() -> None:
    text = "walking Anna"
    tokens = [
        _tok(0, 4, "O"),
        _tok(4, 7, "B-PER", cont=True),  # "##ing" of an O word stays outside
        _tok(8, 10, "B-PER", 0.6),
        _tok(10, 12, "B-LOC", 0.4, cont=True),  # "##na" joins "An" whatever its label
    ]
    (entity,) = group_entities(tokens, text)
    assert (entity.label, entity.start, entity.end, entity.text) == ("PER", 8, 12, "Anna")
    assert entity.score == pytest.approx(0.5)


def test_special_tokens_are_zero_width(tiny_ner_dir: Path) -> None:
    tagger = _tagger(tiny_ner_dir)
    item = tagger.preprocess("john lives", OPTIONS)
    assert item.offsets == [(0, 0), (0, 4), (5, 10), (0, 0)]
    assert tagger.labels() == NER_LABELS


def test_b_everywhere_gives_one_entity_per_word(forced: dict[str, Path]) -> None:
    text = "  John  playing in Paris, walked."
    entities = _entities(_tagger(forced["B-PER"]), text)
    assert _spans(entities) == [
        ("PER", "John"),
        ("PER", "playing"),  # play + ##ing
        ("PER", "in"),
        ("PER", "Paris"),
        ("PER", ","),
        ("PER", "walked"),  # walk + ##ed
        ("PER", "."),
    ]
    assert all(text[e.start : e.end] == e.text for e in entities)
    assert entities[0].start == 2
    assert all(0.0 < e.score <= 1.0 for e in entities)


def test_i_everywhere_gives_one_span(forced: dict[str, Path]) -> None:
    text = " Mary works in NEW York, unknownword!  "
    (entity,) = _entities(_tagger(forced["I-PER"]), text)
    assert (entity.label, entity.start, entity.end) == ("PER", 1, len(text) - 2)
    assert entity.text == text.strip()


def test_o_everywhere_gives_nothing(forced: dict[str, Path]) -> None:
    assert _entities(_tagger(forced["O"]), "john lives in paris") == []


def test_batch_matches_single_items_in_input_order(tiny_ner_dir: Path) -> None:
    tagger = _tagger(tiny_ner_dir)
    texts = ["john lives in paris , france . " * 8, "mary", "new york is a big city !"]
    prepared = [tagger.preprocess(text, OPTIONS) for text in texts]
    batched = tagger.predict(prepared)
    assert any(batched), "the random model should tag something, or this test checks nothing"
    for text, item, got in zip(texts, prepared, batched, strict=True):
        (want,) = tagger.predict([item])
        assert [(e.label, e.start, e.end) for e in got] == [(e.label, e.start, e.end) for e in want]  # type: ignore[union-attr]
        assert [e.score for e in got] == pytest.approx([e.score for e in want], abs=1e-5)  # type: ignore[union-attr]
        assert all(text[e.start : e.end] == e.text for e in got)  # type: ignore[union-attr]


def test_packed_token_logits_match_the_models_own_forward(tiny_ner_dir: Path) -> None:
    """Texts of different lengths together, packed (``PackedEncoder``), against each text
    alone through the Hugging Face model, token by token."""
    tagger = _tagger(tiny_ner_dir)
    assert tagger._packed is not None and tagger._model is not None
    texts = ["john lives in paris , france . " * 8, "mary", "new york is a big city !"]
    prepared = [tagger.preprocess(text, OPTIONS) for text in texts]
    ((indices, logits),) = tagger._logits(prepared)
    with torch.inference_mode():
        for row, index in enumerate(indices):
            item = prepared[index]
            want = tagger._model(input_ids=torch.tensor([item.input_ids])).logits[0]
            assert torch.allclose(logits[row, : len(item)], want, atol=1e-5)
