from __future__ import annotations

import numpy as np

from modelship.core.messages import ItemOptions, PreparedImage, PreparedText
from modelship.predictors.base import batching_order


def _text(tokens: int) -> PreparedText:
    return PreparedText("x", list(range(tokens)), ItemOptions())


def _image(height: int, width: int) -> PreparedImage:
    return PreparedImage(np.zeros((3, height, width), np.float32), width, height, "", ItemOptions())


def test_texts_are_ordered_by_length_keeping_ties_in_input_order() -> None:
    items = [_text(n) for n in (30, 4, 120, 4, 9)]
    assert batching_order(items) == [1, 3, 4, 0, 2]


def test_images_of_one_shape_end_up_together() -> None:
    items = [_image(320, 320), _image(224, 224), _image(320, 320), _image(224, 224)]
    assert batching_order(items) == [1, 3, 0, 2]


def test_nothing_to_order() -> None:
    assert batching_order([]) == []
