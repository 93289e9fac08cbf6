"""Review logic without storage: what a prediction's final label is, how sure the model
was, and whether a person's correction is valid for the item.

Uncertainty drives the review queue (the active-learning loop): for classification it is
the margin ``1 - (p1 - p2)`` between the two best labels (the top label alone when there
is one); for boxes and entities it is ``1 - lowest score``, and 0.5 when the model found
nothing (it may have missed something; a person should look, but after the close calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelship.core.config import Task
from modelship.core.errors import Conflict, InvalidInput
from modelship.core.records import Project, ReviewAction, ReviewRequest

CLASSIFICATION_TASKS = frozenset(
    {Task.image_classification, Task.text_classification, Task.zero_shot_text_classification}
)
_NOTHING_FOUND_UNCERTAINTY = 0.5


@dataclass(frozen=True)
class Assessment:
    value: list[dict[str, Any]]  # the final label(s), boxes or entities
    top_label: str | None
    score: float | None  # what auto-approval compares with the threshold
    uncertainty: float


def assess(task: Task, output: list[dict[str, Any]]) -> Assessment:
    """The model's answer as an annotation: classification keeps the best label."""
    if task in CLASSIFICATION_TASKS:
        if not output:
            return Assessment([], None, None, 1.0)
        best = output[0]["score"]
        second = output[1]["score"] if len(output) > 1 else 0.0
        return Assessment(output[:1], output[0]["label"], best, 1.0 - (best - second))
    if not output:
        return Assessment([], None, None, _NOTHING_FOUND_UNCERTAINTY)
    lowest = min(entry["score"] for entry in output)
    top = max(output, key=lambda entry: entry["score"])["label"]
    return Assessment(output, top, lowest, 1.0 - lowest)


def auto_approved(assessment: Assessment, threshold: float) -> bool:
    return assessment.score is not None and assessment.score >= threshold


def model_annotation(
    task: Task, output: list[dict[str, Any]], auto_approve_threshold: float
) -> tuple[str, Assessment]:
    """A new prediction's annotation: auto-approved at or above the project's threshold,
    else pending a person's review."""
    assessment = assess(task, output)
    approved = auto_approved(assessment, auto_approve_threshold)
    return ("auto_approved" if approved else "pending"), assessment


def corrected_value(
    project: Project,
    request: ReviewRequest,
    width: int | None,
    height: int | None,
    text: str | None,
) -> list[dict[str, Any]]:
    """The person's labels, boxes or entities, checked against the project and the item."""
    allowed = {label.name for label in project.labels} if project.labels else None

    def check_label(name: str) -> None:
        if allowed is not None and name not in allowed:
            raise InvalidInput(f"{name!r} is not a label of this project", "unknown_label")

    if project.task in CLASSIFICATION_TASKS:
        if not request.labels:
            raise InvalidInput("a correction needs 'labels'", "missing_labels")
        for name in request.labels:
            check_label(name)
        return [{"label": name, "score": None} for name in request.labels]
    if project.task == Task.object_detection:
        if request.detections is None:
            raise InvalidInput("a correction needs 'detections' (may be empty)", "missing_boxes")
        assert width is not None and height is not None
        boxes = []
        for index, detection in enumerate(request.detections):
            check_label(detection.label)
            x, y, w, h = detection.box
            if x < 0 or y < 0 or x + w > width + 0.5 or y + h > height + 0.5:
                raise InvalidInput(
                    f"box {index} leaves the {width}x{height} image", "box_out_of_bounds"
                )
            boxes.append({"label": detection.label, "score": None, "box": [x, y, w, h]})
        return boxes
    if request.entities is None:
        raise InvalidInput("a correction needs 'entities' (may be empty)", "missing_entities")
    assert text is not None
    spans = []
    for index, entity in enumerate(request.entities):
        check_label(entity.label)
        if not 0 <= entity.start < entity.end <= len(text):
            raise InvalidInput(f"entity {index} is outside the text", "span_out_of_bounds")
        spans.append(
            {
                "label": entity.label,
                "start": entity.start,
                "end": entity.end,
                "text": text[entity.start : entity.end],
                "score": None,
            }
        )
    return spans


def decide(
    project: Project,
    request: ReviewRequest,
    current_value: list[dict[str, Any]] | None,
    width: int | None,
    height: int | None,
    text: str | None,
) -> tuple[str, list[dict[str, Any]]]:
    """(new status, new value) for a review action on an item's current annotation."""
    if current_value is None:
        raise Conflict("the item has no label to review yet; run a job first", "not_labeled")
    if request.action is ReviewAction.approve:
        return "approved", current_value
    if request.action is ReviewAction.reject:
        return "rejected", []
    return "corrected", corrected_value(project, request, width, height, text)
