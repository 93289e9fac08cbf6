"""BERT-family encoders on packed tokens: the linear layers never see padding.

A padded batch runs every linear layer on ``batch * longest`` rows; the texts of one
dynamic batch differ in length, so much of that is padding. Here the batch's tokens are
concatenated into one ``(tokens, hidden)`` matrix for the linear layers (80% of the
forward on CPU), and only attention, which must not mix texts, runs per group of
similar lengths, padded (figures: docs/benchmark.md, "Packed encoders").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from modelship.predictors.base import length_sorted_chunks


@dataclass(frozen=True)
class _Group:
    """Texts of similar lengths whose attention runs as one padded batch."""

    gather: torch.Tensor  # (texts, longest): token rows; padding points past the last row
    keep: torch.Tensor  # (texts * longest,) which padded positions are real tokens
    rows: torch.Tensor  # the token rows of the kept positions, in their order
    mask: torch.Tensor  # (texts, 1, 1, longest): which keys a query may attend to


class PackedEncoder:
    """Runs a BERT encoder (``BertModel``: absolute positions, post-norm layers) over texts
    packed end to end, matching its padded forward to float precision.

    Args:
        model: the loaded model, in eval mode.
    """

    def __init__(self, model: Any) -> None:
        self._model = model  # a BertModel: its submodules are read by name
        self._heads = model.config.num_attention_heads
        self._layers: list[tuple[torch.Tensor, torch.Tensor, Any]] = []
        for layer in self._model.encoder.layer:
            attention = layer.attention.self
            # Queries, keys and values in one matrix product.
            weight = torch.cat(
                [attention.query.weight, attention.key.weight, attention.value.weight]
            )
            bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
            self._layers.append((weight, bias, layer))

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        config = model.config
        return (
            config.model_type == "bert"
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not config.is_decoder
        )

    def __call__(self, texts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states of every token, texts' lengths): ``(sum of lengths, hidden)``,
        text after text, and ``(texts,)``."""
        device = self._model.device
        lengths = torch.tensor([len(ids) for ids in texts])
        ids = torch.tensor([token for text in texts for token in text], device=device)
        # Each token's place in its own text: its row less its text's first row.
        positions = torch.arange(len(ids)) - torch.repeat_interleave(_starts(lengths), lengths)
        positions = positions.to(device)
        embeddings = self._model.embeddings
        x = embeddings.LayerNorm(
            embeddings.word_embeddings(ids)
            + embeddings.position_embeddings(positions)
            + embeddings.token_type_embeddings(torch.zeros_like(ids))
        )
        groups = _groups(texts, lengths, device)
        tokens, hidden = x.shape
        for weight, bias, layer in self._layers:
            qkv = F.linear(x, weight, bias)
            qkv = torch.cat([qkv, qkv.new_zeros(1, 3 * hidden)])  # the row padding reads
            context = x.new_empty(tokens, hidden)
            for group in groups:
                count, longest = group.gather.shape
                q, k, v = (
                    qkv[group.gather]
                    .view(count, longest, 3, self._heads, hidden // self._heads)
                    .permute(2, 0, 3, 1, 4)
                )
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask)
                context[group.rows] = out.transpose(1, 2).reshape(-1, hidden)[group.keep]
            output = layer.attention.output
            x = output.LayerNorm(output.dense(context) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        return x, lengths


def first_tokens(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each text's first token ([CLS]) from packed hidden states: ``(texts, hidden)``."""
    return hidden[_starts(lengths).to(hidden.device)]


def means(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each text's mean over its tokens from packed hidden states: ``(texts, hidden)``."""
    owners = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(hidden.device)
    sums = hidden.new_zeros(len(lengths), hidden.shape[1]).index_add_(0, owners, hidden)
    return sums / lengths.clamp(min=1).to(sums)[:, None]


def _starts(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(lengths, 0) - lengths


def packed_passes(items: Sequence[Sized], max_tokens: int = 16_384) -> Iterator[list[int]]:
    """Indices of consecutive ``items`` with at most ``max_tokens`` tokens a pass (a longer
    item alone), bounding a packed forward's activations."""
    chunk: list[int] = []
    tokens = 0
    for index, item in enumerate(items):
        if chunk and tokens + len(item) > max_tokens:
            yield chunk
            chunk, tokens = [], 0
        chunk.append(index)
        tokens += len(item)
    if chunk:
        yield chunk


def _groups(
    texts: Sequence[Sequence[int]], lengths: torch.Tensor, device: torch.device
) -> list[_Group]:
    tokens = int(lengths.sum())
    starts = _starts(lengths)
    groups = []
    for chunk in length_sorted_chunks(texts):
        longest = max(int(lengths[i]) for i in chunk)
        gather = torch.full((len(chunk), longest), tokens, dtype=torch.long)
        for row, index in enumerate(chunk):
            start, length = int(starts[index]), int(lengths[index])
            gather[row, :length] = torch.arange(start, start + length)
        real = gather < tokens
        keep = real.flatten()
        groups.append(
            _Group(
                gather.to(device),
                keep.to(device),
                gather.flatten()[keep].to(device),
                real[:, None, None, :].to(device),
            )
        )
    return groups
