"""Supervised text classification: any ``AutoModelForSequenceClassification`` directory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from modelship.core.config import Task
from modelship.core.messages import ItemOptions, Output, PreparedText
from modelship.predictors._hf_text import HFTextPredictor
from modelship.predictors.base import top_k
from modelship.predictors.packed import first_tokens


class HFTextClassifier(HFTextPredictor):
    """Softmax over the model's labels, or independent sigmoids for multi-label models."""

    task = Task.text_classification
    auto_model = AutoModelForSequenceClassification

    def load_processor(self) -> None:
        super().load_processor()
        self._multi_label = self._hf_config.problem_type == "multi_label_classification"

    def preprocess(self, raw: str, options: ItemOptions) -> PreparedText:
        return PreparedText(raw, list(self._tokenize(raw)["input_ids"]), options)

    def _head(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        assert self._model is not None
        model: Any = self._model  # a BertForSequenceClassification: pooler, classifier
        pooled = model.bert.pooler(first_tokens(hidden, lengths).unsqueeze(1))  # reads [:, 0]
        logits: torch.Tensor = model.classifier(pooled)
        return logits

    def predict(self, batch: Sequence[PreparedText]) -> list[Output]:
        outputs: list[Output] = [[] for _ in batch]
        for indices, logits in self._logits(batch):
            scores = logits.sigmoid() if self._multi_label else logits.softmax(dim=-1)
            for row, index in enumerate(indices):
                outputs[index] = top_k(scores[row], self._names, batch[index].options.top_k)
        return outputs
