"""Tiny random-weight Hugging Face models, saved once per session like real checkpoints.

They are small enough to build in about a second and exercise the same loading, batching
and post-processing code paths as full-size models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    ResNetConfig,
)

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "john", "mary", "lives", "works", "in", "paris", "france", "london", "the", "a", "city",
    "play", "walk", "talk", "new", "york", "is", "big", "and", "very", "good", "bad",
    "##ing", "##ed", "##s", "##er", ",", ".", "!", "?", "-",
]  # fmt: skip

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXT_LABELS = ["negative", "neutral", "positive"]
DETR_LABELS = ["cat", "dog", "bird"]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    """A lower-casing WordPiece tokenizer; words outside VOCAB become [UNK]."""
    vocab_dir = tmp_path_factory.mktemp("vocab")
    (vocab_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # transformers 5 ignores `vocab_file=` in the constructor; from_pretrained reads vocab.txt.
    return BertTokenizerFast.from_pretrained(vocab_dir)


def _bert_config(labels: list[str], **extra: object) -> BertConfig:
    return BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=512,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **extra,
    )


@pytest.fixture(scope="session")
def tiny_text_classifier_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: BertTokenizerFast
) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("text-classifier")
    BertForSequenceClassification(_bert_config(TEXT_LABELS)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_ner_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: BertTokenizerFast
) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ner")
    BertForTokenClassification(_bert_config(NER_LABELS)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_detr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DETR with a two-stage ResNet. Weights are scaled up from the default init, under which
    every query predicts the same centred box, so that boxes and scores vary."""
    torch.manual_seed(2)
    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = DetrConfig(
        use_timm_backbone=False,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=10,
        init_std=0.1,
        id2label=dict(enumerate(DETR_LABELS)),
        label2id={label: i for i, label in enumerate(DETR_LABELS)},
    )
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.model.query_position_embeddings.weight, std=1.0)
        for layer in (model.bbox_predictor.layers[-1], model.class_labels_classifier):
            torch.nn.init.normal_(layer.weight, std=0.3)
    path = tmp_path_factory.mktemp("detr")
    model.save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path
