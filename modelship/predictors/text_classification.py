"""Supervised text classification: any ``AutoModelForSequenceClassification`` directory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from modelship.errors import ModelNotReady
from modelship.predictors.base import TextPredictor, length_sorted_chunks, pad, top_k
from modelship.schemas import ItemOptions, Output, PreparedText, Task


class HFTextClassifier(TextPredictor):
    """Softmax over the model's labels, or independent sigmoids for multi-label models."""

    task = Task.text_classification

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._model: PreTrainedModel | None = None
        self._names: list[str] = []
        self._multi_label = False

    def load_processor(self) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(self.files.path)
        config = AutoConfig.from_pretrained(self.files.path)
        self._names = [config.id2label[i] for i in range(config.num_labels)]
        self._multi_label = config.problem_type == "multi_label_classification"

    def load(self) -> None:
        self.load_processor()
        model = AutoModelForSequenceClassification.from_pretrained(
            self.files.path, dtype=self.dtype
        )
        self._model = model.to(self.device).eval()

    def labels(self) -> list[str] | None:
        return list(self._names) or None

    def preprocess(self, raw: str, options: ItemOptions) -> PreparedText:
        if self._tokenizer is None:
            raise ModelNotReady("tokenizer not loaded")
        max_length = min(self.config.max_length, self._tokenizer.model_max_length)
        encoded = self._tokenizer(raw, truncation=True, max_length=max_length)
        return PreparedText(raw, list(encoded["input_ids"]), options)

    def predict(self, batch: Sequence[PreparedText]) -> list[Output]:
        if self._model is None or self._tokenizer is None:
            raise ModelNotReady("model not loaded")
        pad_id = self._tokenizer.pad_token_id or 0
        outputs: list[Output] = [[] for _ in batch]
        with torch.inference_mode():
            for indices in length_sorted_chunks(batch):
                ids, mask = pad([batch[i] for i in indices], pad_id, self.device)
                logits = self._model(input_ids=ids, attention_mask=mask).logits.float()
                scores = logits.sigmoid() if self._multi_label else logits.softmax(dim=-1)
                for row, index in enumerate(indices):
                    outputs[index] = top_k(scores[row], self._names, batch[index].options.top_k)
        return outputs
