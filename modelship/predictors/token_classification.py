"""Named-entity style token classification: any ``AutoModelForTokenClassification`` directory.

Tokens are labelled by argmax, then grouped into character spans of the original text the
way Hugging Face's "simple" aggregation does, except that a word's sub-word pieces always
join the word (and take its first piece's label), so an entity never ends mid-word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForTokenClassification

from modelship.core.config import Task
from modelship.core.errors import ConfigurationError
from modelship.core.messages import Entity, ItemOptions, Output, PreparedText
from modelship.predictors._hf_text import HFTextPredictor

OUTSIDE = "O"


@dataclass(frozen=True)
class TaggedToken:
    """One token's span in the text, its label and that label's probability."""

    start: int
    end: int
    label: str
    score: float
    continues_word: bool = False


def split_tag(label: str) -> tuple[str, str]:
    """("B" | "I", entity type); labels without a BIO prefix act as "I" so they merge."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_entities(tokens: Sequence[TaggedToken], text: str) -> list[Entity]:
    """Merge tagged tokens into entities; zero-width tokens (special tokens) are skipped.

    A new entity starts on "B-" or on a change of type; "O" tokens end one; a token that
    continues a word always joins the current group, whatever its own label.
    """
    entities: list[Entity] = []
    group: list[TaggedToken] = []
    kind = OUTSIDE

    def close() -> None:
        if group and kind != OUTSIDE:
            start, end = group[0].start, group[-1].end
            score = sum(token.score for token in group) / len(group)
            entities.append(
                Entity(label=kind, start=start, end=end, text=text[start:end], score=score)
            )

    for token in tokens:
        if token.end <= token.start:
            continue
        bio, tag = split_tag(token.label)
        if group and (token.continues_word or (bio == "I" and tag == kind)):
            group.append(token)
            continue
        close()
        group, kind = [token], tag
    close()
    return entities


class HFTokenClassifier(HFTextPredictor):
    """Entities with character offsets into the original text; needs a fast tokenizer."""

    task = Task.token_classification
    auto_model = AutoModelForTokenClassification

    def load_processor(self) -> None:
        super().load_processor()
        tokenizer = self._tokenizer
        if tokenizer is None or not tokenizer.is_fast:
            raise ConfigurationError(
                f"model {self.config.name!r}: token classification needs a fast tokenizer "
                "(tokenizer.json) for character offsets"
            )
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._subword_prefix: str | None = getattr(
            getattr(backend, "model", None), "continuing_subword_prefix", None
        )

    def preprocess(self, raw: str, options: ItemOptions) -> PreparedText:
        """Special tokens get the zero-width offset (0, 0), which grouping skips."""
        encoded = self._tokenize(raw, return_offsets_mapping=True, return_special_tokens_mask=True)
        offsets = [
            (0, 0) if special else (int(start), int(end))
            for (start, end), special in zip(
                encoded["offset_mapping"], encoded["special_tokens_mask"], strict=True
            )
        ]
        return PreparedText(raw, list(encoded["input_ids"]), options, offsets)

    def _head(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        assert self._model is not None
        model: Any = self._model  # a BertForTokenClassification: a classifier per token
        per_text = model.classifier(hidden).split(lengths.tolist())
        return nn.utils.rnn.pad_sequence(list(per_text), batch_first=True)

    def predict(self, batch: Sequence[PreparedText]) -> list[Output]:
        outputs: list[Output] = [[] for _ in batch]
        for indices, logits in self._logits(batch):
            probs = logits.softmax(-1)
            for row, index in enumerate(indices):
                item = batch[index]
                tokens = self._tag(item, probs[row, : len(item)].cpu())
                outputs[index] = group_entities(tokens, item.text)
        return outputs

    def _tag(self, item: PreparedText, probs: torch.Tensor) -> list[TaggedToken]:
        """Label each token; a word's later pieces take the label of its first piece."""
        assert item.offsets is not None
        assert self._tokenizer is not None
        best = probs.argmax(dim=-1).tolist()
        pieces = self._tokenizer.convert_ids_to_tokens(item.input_ids)
        tokens: list[TaggedToken] = []
        previous_end = -1
        label_id = 0
        for position, (start, end) in enumerate(item.offsets):
            continues = end > start and self._continues_word(
                pieces[position], start, previous_end, item.text
            )
            if not continues:
                label_id = best[position]
            score = float(probs[position, label_id])
            tokens.append(TaggedToken(start, end, self._names[label_id], score, continues))
            if end > start:
                previous_end = end
        return tokens

    def _continues_word(self, piece: str, start: int, previous_end: int, text: str) -> bool:
        """WordPiece marks continuations ("##ing"); for other tokenizers, a piece continues a
        word when it touches the previous piece and both sides are letters or digits."""
        if start != previous_end:
            return False
        if self._subword_prefix:
            return piece.startswith(self._subword_prefix)
        return text[start - 1].isalnum() and text[start].isalnum()
