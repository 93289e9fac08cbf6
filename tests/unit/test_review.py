"""Auto-approval, the review queue, review decisions and project statistics."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from modelship.core.errors import Conflict
from modelship.core.records import BulkApproveRequest, ReviewAction
from modelship.core.settings import Settings
from modelship.service.runner import JobRunner
from modelship.service.workflow import Workflow
from storage.services import Services
from tests.conftest import PACKAGED_MODELS, payload
from tests.unit.flow import LABELS, assert_error, drain, make_project, upload_texts

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXTS = [
    "we won the cup final with a late goal",
    "simmer the soup and stir in the cream",
    "the striker scored twice in the derby",
    "knead the dough and bake it for an hour",
    "the weather was grey on tuesday",
    "a box of spoons",
]


async def _labeled_texts(
    client: httpx.AsyncClient, runner: JobRunner, threshold: float = 0.9
) -> tuple[dict[str, Any], dict[str, str]]:
    project = await make_project(
        client,
        task="zero-shot-text-classification",
        model="minilm",
        labels=LABELS,
        auto_approve_threshold=threshold,
    )
    ids = await upload_texts(client, project, TEXTS)
    await client.post(f"/api/v1/projects/{project['id']}/jobs")
    await drain(runner)
    return project, dict(zip(TEXTS, ids, strict=True))


async def _detail(client: httpx.AsyncClient, project: dict[str, Any], item: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/projects/{project['id']}/items/{item}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def test_auto_approval_follows_the_threshold(
    client: httpx.AsyncClient, runner: JobRunner
) -> None:
    project, ids = await _labeled_texts(client, runner, threshold=0.9)
    statuses = []
    for text, item in ids.items():
        annotation = (await _detail(client, project, item))["annotation"]
        assert annotation["model"] == "minilm" and annotation["model_version"].startswith("sha256:")
        assert annotation["value"] == annotation["prediction"][:1]  # the best label is final
        expected = "auto_approved" if annotation["score"] >= 0.9 else "pending"
        assert annotation["status"] == expected, (text, annotation)
        statuses.append(annotation["status"])
    assert {"auto_approved", "pending"} <= set(statuses), statuses


async def test_the_queue_puts_the_least_certain_first(
    client: httpx.AsyncClient, runner: JobRunner
) -> None:
    project, _ = await _labeled_texts(client, runner, threshold=1.0)  # everything pending
    url = f"/api/v1/projects/{project['id']}/review-queue"
    entries = (await client.get(url)).json()["entries"]
    assert len(entries) == len(TEXTS)
    uncertainty = [e["annotation"]["uncertainty"] for e in entries]
    assert uncertainty == sorted(uncertainty, reverse=True)
    for entry in entries:  # margin between the two best labels
        first, second = entry["annotation"]["prediction"][:2]
        assert entry["annotation"]["uncertainty"] == pytest.approx(
            1 - (first["score"] - second["score"])
        )
    assert entries[0]["text"] in TEXTS

    sport = (await client.get(url, params={"strategy": "label", "label": "sport"})).json()
    assert sport["entries"] and {e["annotation"]["top_label"] for e in sport["entries"]} == {
        "sport"
    }
    shuffled = [
        [e["item"]["id"] for e in (await client.get(url, params=p)).json()["entries"]]
        for p in ({"strategy": "random", "seed": "a"}, {"strategy": "random", "seed": "a"})
    ]
    assert shuffled[0] == shuffled[1] and sorted(shuffled[0]) == sorted(
        e["item"]["id"] for e in entries
    )
    assert len((await client.get(url, params={"limit": 2})).json()["entries"]) == 2
    assert_error(await client.get(url, params={"strategy": "nope"}), 422, "invalid_request")


async def test_review_decisions_are_recorded_and_counted(
    client: httpx.AsyncClient, runner: JobRunner, services: Services, job_settings: Settings
) -> None:
    project, ids = await _labeled_texts(client, runner, threshold=1.0)
    base = f"/api/v1/projects/{project['id']}/items"
    football, soup, striker, bread, weather, spoons = ids.values()

    approved = await client.post(f"{base}/{football}/review", json={"action": "approve"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["annotation"]["status"] == "approved"
    assert approved.json()["annotation"]["value"][0]["label"] == "sport"

    corrected = await client.post(
        f"{base}/{soup}/review", json={"action": "correct", "labels": ["sport"]}
    )
    detail = corrected.json()
    assert detail["annotation"]["status"] == "corrected"
    assert detail["annotation"]["value"] == [{"label": "sport", "score": None}]
    assert detail["annotation"]["updated_by"] == "anonymous"
    (record,) = detail["reviews"]
    assert record["action"] == "correct" and record["reviewer"] == "anonymous"
    assert record["before"]["status"] == "pending"
    assert record["before"]["value"][0]["label"] == "cooking"
    assert record["after"] == {"status": "corrected", "value": [{"label": "sport", "score": None}]}

    rejected = await client.post(f"{base}/{weather}/review", json={"action": "reject"})
    assert rejected.json()["annotation"]["status"] == "rejected"
    assert rejected.json()["annotation"]["value"] == []

    assert_error(
        await client.post(f"{base}/{spoons}/review", json={"action": "correct", "labels": ["x"]}),
        422,
        "unknown_label",
    )
    assert_error(
        await client.post(f"{base}/{spoons}/review", json={"action": "correct"}),
        422,
        "missing_labels",
    )
    assert_error(
        await client.post(f"{base}/{spoons}/review", json={"action": "maybe"}),
        422,
        "invalid_request",
    )

    bulk = await client.post(
        f"/api/v1/projects/{project['id']}/review/approve",
        json={"label": "cooking", "min_score": 0.5},
    )
    assert bulk.json()["approved"] >= 1
    assert (await _detail(client, project, bread))["annotation"]["status"] == "approved"
    assert (await _detail(client, project, striker))["annotation"]["status"] == "pending"

    stats = (await client.get(f"/api/v1/projects/{project['id']}/stats")).json()
    assert stats["items"] == stats["labeled"] == len(TEXTS)
    assert stats["by_status"]["rejected"] == 1 and stats["by_status"]["corrected"] == 1
    assert stats["auto_approval_rate"] == 0.0
    reviewed = stats["reviewed"]
    assert reviewed == 3 + bulk.json()["approved"]
    # the corrected and the rejected items are the model's two mistakes
    assert stats["model_accuracy"] == pytest.approx((reviewed - 2) / reviewed)
    by_label = {entry["label"]: entry for entry in stats["labels"]}
    assert [entry["label"] for entry in stats["labels"]][:2] == ["sport", "cooking"]
    assert by_label["cooking"]["reviewed"] >= 2 and by_label["cooking"]["model_correct"] >= 1

    # a second job over the same items leaves people's decisions alone
    await client.post(f"/api/v1/projects/{project['id']}/jobs")
    await drain(runner)
    assert (await _detail(client, project, soup))["annotation"]["status"] == "corrected"
    # and decisions survive a restart: a fresh connection pool reads them back
    fresh = Services.from_settings(job_settings)
    try:
        again = await Workflow(fresh, PACKAGED_MODELS, job_settings).reviews.detail(
            uuid.UUID(project["id"]), uuid.UUID(soup)
        )
    finally:
        await fresh.close()
    assert again.annotation is not None and again.annotation.status == "corrected"
    assert [r.action for r in again.reviews] == ["correct"]


async def test_an_unlabeled_item_cannot_be_reviewed(client: httpx.AsyncClient) -> None:
    project = await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )
    (item,) = await upload_texts(client, project, ["not labeled yet"])
    base = f"/api/v1/projects/{project['id']}/items"
    assert_error(
        await client.post(f"{base}/{item}/review", json={"action": "approve"}), 409, "not_labeled"
    )
    assert (await _detail(client, project, item))["annotation"] is None
    other = await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )
    assert_error(
        await client.get(f"/api/v1/projects/{other['id']}/items/{item}"), 404, "unknown_item"
    )


async def test_detection_corrections_are_checked_against_the_image(
    client: httpx.AsyncClient, runner: JobRunner
) -> None:
    project = await make_project(
        client,
        task="object-detection",
        model="nudenet",
        labels=[{"name": "FACE_FEMALE"}, {"name": "FACE_MALE"}],
        confidence_threshold=0.3,
    )
    upload = await client.post(
        f"/api/v1/projects/{project['id']}/items",
        files=[("file", ("a.jpg", payload("astronaut.jpg")))],
    )
    (item,) = upload.json()["items"]
    await client.post(f"/api/v1/projects/{project['id']}/jobs")
    await drain(runner)
    url = f"/api/v1/projects/{project['id']}/items/{item['id']}/review"
    annotation = (await _detail(client, project, item["id"]))["annotation"]
    assert annotation["value"] and all("box" in box for box in annotation["value"])
    assert annotation["uncertainty"] == pytest.approx(
        1 - min(b["score"] for b in annotation["value"])
    )

    outside = {"label": "FACE_FEMALE", "box": [400, 10, 200, 50]}  # the image is 512 wide
    body = {"action": "correct", "detections": [outside]}
    assert_error(await client.post(url, json=body), 422, "box_out_of_bounds")
    body["detections"] = [{"label": "CAT", "box": [1, 1, 5, 5]}]
    assert_error(await client.post(url, json=body), 422, "unknown_label")
    body["detections"] = [{"label": "FACE_FEMALE", "box": [10, 10, 0, 5]}]
    assert_error(await client.post(url, json=body), 422, "invalid_request")
    for box in ("[NaN, 0, 5, 5]", "[0, 0, NaN, NaN]"):  # NaN passed every check: a 500
        nan = f'{{"action": "correct", "detections": [{{"label": "FACE_FEMALE", "box": {box}}}]}}'
        sent = await client.post(url, content=nan, headers={"content-type": "application/json"})
        assert_error(sent, 422, "invalid_request")
    body["detections"] = [{"label": "FACE_FEMALE", "box": [180, 60, 120, 140]}]
    done = await client.post(url, json=body)
    assert done.status_code == 200, done.text
    assert done.json()["annotation"]["value"] == [
        {"label": "FACE_FEMALE", "score": None, "box": [180, 60, 120, 140]}
    ]
    empty = await client.post(url, json={"action": "correct", "detections": []})
    assert empty.json()["annotation"]["value"] == []


async def test_a_decision_on_a_label_that_changed_meanwhile_is_a_conflict(
    client: httpx.AsyncClient, runner: JobRunner, services: Services, job_settings: Settings
) -> None:
    """Decisions are made on the label read, and recorded only if it is still the same."""
    project, ids = await _labeled_texts(client, runner, threshold=1.0)
    item = uuid.UUID(next(iter(ids.values())))
    workflow = Workflow(services, PACKAGED_MODELS, job_settings)
    stale = await workflow.reviews.target(uuid.UUID(project["id"]), item)
    assert stale.status == "pending"
    url = f"/api/v1/projects/{project['id']}/items/{item}/review"
    assert (await client.post(url, json={"action": "reject"})).status_code == 200
    with pytest.raises(Conflict) as caught:
        await workflow.reviews.record(
            job_settings.tenant,
            uuid.UUID(project["id"]),
            stale,
            ReviewAction.approve,
            "approved",
            [],
            "x",
        )
    assert caught.value.code == "review_conflict"
    detail = await _detail(client, project, str(item))
    assert detail["annotation"]["status"] == "rejected"
    assert [r["action"] for r in detail["reviews"]] == ["reject"]

    # two corrections made on the same label: the status stays "corrected", the value moved
    first = {"action": "correct", "labels": ["cooking"]}
    assert (await client.post(url, json=first)).status_code == 200
    stale = await workflow.reviews.target(uuid.UUID(project["id"]), item)
    second = {"action": "correct", "labels": ["sport"]}
    assert (await client.post(url, json=second)).status_code == 200
    with pytest.raises(Conflict):  # it overwrote "sport", recording "cooking" as before
        await workflow.reviews.record(
            job_settings.tenant,
            uuid.UUID(project["id"]),
            stale,
            ReviewAction.correct,
            "corrected",
            [{"label": "cooking", "score": None}, {"label": "sport", "score": None}],
            "x",
        )
    detail = await _detail(client, project, str(item))
    assert [label["label"] for label in detail["annotation"]["value"]] == ["sport"]


async def test_bulk_approval_is_capped_per_call_and_says_when_more_match(
    client: httpx.AsyncClient, runner: JobRunner, services: Services, job_settings: Settings
) -> None:
    project, _ = await _labeled_texts(client, runner, threshold=1.0)  # every label pending
    capped = job_settings.model_copy(update={"max_bulk_approve": 4})
    workflow = Workflow(services, PACKAGED_MODELS, capped)
    everything = BulkApproveRequest()
    target = capped.tenant, uuid.UUID(project["id"]), everything, "anonymous"
    first = await workflow.bulk_approve(*target)
    second = await workflow.bulk_approve(*target)
    assert (first, second) == ((4, True), (len(TEXTS) - 4, False))
