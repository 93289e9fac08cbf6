"""What Hugging Face text predictors share: tokenizer, label names, length-grouped forwards."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from modelship.core.errors import ModelNotReady
from modelship.core.messages import PreparedText
from modelship.predictors.base import TextPredictor, length_sorted_chunks, pad
from modelship.predictors.packed import PackedEncoder, packed_passes


class HFTextPredictor(TextPredictor):
    """A model directory with a tokenizer and ``id2label``; subclasses name the Auto class."""

    auto_model: ClassVar[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._model: PreTrainedModel | None = None
        self._names: list[str] = []
        self._packed: PackedEncoder | None = None

    def load_processor(self) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(self.files.path)
        self._hf_config = AutoConfig.from_pretrained(self.files.path)
        self._names = [self._hf_config.id2label[i] for i in range(self._hf_config.num_labels)]

    def load(self) -> None:
        self.load_processor()
        model = self.auto_model.from_pretrained(self.files.path, dtype=self.dtype)
        self._model = model.to(self.device).eval()
        encoder = getattr(self._model, "bert", None)  # BertFor* models keep theirs here
        supported = encoder is not None and PackedEncoder.supports(encoder)
        self._packed = PackedEncoder(encoder) if supported else None

    def labels(self) -> list[str] | None:
        return list(self._names) or None

    def _tokenize(self, text: str, **extra: Any) -> Any:
        if self._tokenizer is None:
            raise ModelNotReady("tokenizer not loaded")
        max_length = min(self.config.max_length, self._tokenizer.model_max_length)
        return self._tokenizer(text, truncation=True, max_length=max_length, **extra)

    def _logits(self, batch: Sequence[PreparedText]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices into ``batch``, float logits) per forward: packed when the encoder
        allows it (``PackedEncoder``), else padded in groups of similar lengths. Token
        logits come padded to the group's longest text."""
        if self._model is None or self._tokenizer is None:
            raise ModelNotReady("model not loaded")
        with torch.inference_mode():
            if self._packed is not None:
                for indices in packed_passes(batch):
                    hidden, lengths = self._packed([batch[i].input_ids for i in indices])
                    yield indices, self._head(hidden, lengths).float()
                return
            pad_id = self._tokenizer.pad_token_id or 0
            for indices in length_sorted_chunks(batch):
                ids, mask = pad([batch[i] for i in indices], pad_id, self.device)
                yield indices, self._model(input_ids=ids, attention_mask=mask).logits.float()

    @abstractmethod
    def _head(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The model's head on packed hidden states (``PackedEncoder``'s output)."""
