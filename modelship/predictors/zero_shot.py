"""Zero- and few-shot text classification by sentence-embedding similarity.

Each candidate label becomes a prototype: the normalised mean of the embedding of its
name (or description) and of its few-shot examples. A text's scores are a softmax over
its cosine similarities to the prototypes, sharpened by the configured temperature.
Works with any mean- or CLS-pooled sentence encoder; packaged: all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from modelship.core.config import LabelSpec, Task
from modelship.core.errors import InvalidInput
from modelship.core.messages import ItemOptions, LabelScore, PreparedText
from modelship.predictors.base import TextPredictor, length_sorted_chunks, pad, top_k
from modelship.predictors.packed import PackedEncoder, first_tokens, means, packed_passes

_PROTOTYPE_CACHE_SIZE = 128

LabelKey = tuple[tuple[str, str | None, tuple[str, ...]], ...]


def _label_key(labels: Sequence[LabelSpec]) -> LabelKey:
    return tuple((spec.name, spec.description, tuple(spec.examples)) for spec in labels)


class EmbeddingZeroShotClassifier(TextPredictor):
    task = Task.zero_shot_text_classification

    def load_processor(self) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.files.path)

    def load(self) -> None:
        from transformers import AutoModel

        self.load_processor()
        self._model = AutoModel.from_pretrained(self.files.path, dtype=self.dtype)
        self._model = self._model.to(self.device).eval()
        self._cls_pooling = self._reads_cls_pooling()
        self._packed = PackedEncoder(self._model) if PackedEncoder.supports(self._model) else None
        self._prototypes: OrderedDict[LabelKey, torch.Tensor] = OrderedDict()

    def _reads_cls_pooling(self) -> bool:
        pooling = self.files.path / "1_Pooling" / "config.json"
        if not pooling.exists():
            return False
        return bool(json.loads(pooling.read_text()).get("pooling_mode_cls_token", False))

    def tokenize(self, text: str) -> list[int]:
        # The model takes no more than its tokenizer's limit (its positions), whatever the
        # configured max_length says, as the other text predictors do (_hf_text).
        max_length = min(self.config.max_length, self._tokenizer.model_max_length)
        encoded = self._tokenizer(text, truncation=True, max_length=max_length)
        return list(encoded["input_ids"])

    def preprocess(self, raw: str, options: ItemOptions) -> PreparedText:
        if not options.labels:
            raise InvalidInput(
                "no candidate labels: send 'labels' or configure them for this model",
                "labels_required",
            )
        return PreparedText(raw, self.tokenize(raw), options)

    def embed(self, items: Sequence[PreparedText]) -> torch.Tensor:
        """Unit-length embeddings, in input order: packed when the encoder allows it
        (``PackedEncoder``), else in padded batches grouped by length."""
        out = torch.empty((len(items), self._model.config.hidden_size))
        with torch.inference_mode():
            for chunk in self._passes(items):
                out[chunk] = F.normalize(
                    self._pooled([items[i] for i in chunk]).float(), dim=-1
                ).cpu()
        return out

    def _passes(self, items: Sequence[PreparedText]) -> Iterator[list[int]]:
        return packed_passes(items) if self._packed is not None else length_sorted_chunks(items)

    def _pooled(self, items: Sequence[PreparedText]) -> torch.Tensor:
        if self._packed is not None:
            hidden, lengths = self._packed([item.input_ids for item in items])
            return (first_tokens if self._cls_pooling else means)(hidden, lengths)
        ids, mask = pad(items, self._tokenizer.pad_token_id or 0, self.device)
        hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
        if self._cls_pooling:
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def prototypes(self, labels: Sequence[LabelSpec]) -> torch.Tensor:
        key = _label_key(labels)
        if key in self._prototypes:
            self._prototypes.move_to_end(key)
            return self._prototypes[key]
        texts: list[str] = []
        owners: list[int] = []
        for index, spec in enumerate(labels):
            name = f"{spec.name}: {spec.description}" if spec.description else spec.name
            for text in (name, *spec.examples):
                texts.append(text)
                owners.append(index)
        vectors = self.embed([PreparedText(t, self.tokenize(t), ItemOptions()) for t in texts])
        sums = torch.zeros((len(labels), vectors.shape[1])).index_add_(
            0, torch.tensor(owners), vectors
        )
        result = F.normalize(sums, dim=-1)
        self._prototypes[key] = result
        if len(self._prototypes) > _PROTOTYPE_CACHE_SIZE:
            self._prototypes.popitem(last=False)
        return result

    def predict(self, batch: Sequence[PreparedText]) -> list[list[LabelScore]]:  # type: ignore[override]
        embeddings = self.embed(batch)
        results: list[list[LabelScore]] = []
        for vector, item in zip(embeddings, batch, strict=True):
            labels = item.options.labels or ()
            similarity = self.prototypes(labels) @ vector
            scores = (similarity / self.config.temperature).softmax(-1)
            results.append(top_k(scores, [spec.name for spec in labels], item.options.top_k))
        return results

    def probe_options(self) -> ItemOptions:
        options = super().probe_options()
        if options.labels:
            return options
        return ItemOptions(labels=(LabelSpec(name="positive"), LabelSpec(name="negative")))

    def labels(self) -> list[str] | None:
        return [spec.name for spec in self.config.labels] if self.config.labels else None
