"""The default application, deployed from config/serve_config.yaml, over real HTTP."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import payload


def test_ready_only_when_every_model_is_loaded(http: httpx.Client) -> None:
    ready = http.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "efficientnet-lite0": "ready",
        "minilm-zero-shot": "ready",
        "nudenet-320n": "ready",
        "database": "ready",
        "redis": "ready",
        "object_storage": "ready",
    }
    # security headers come through Serve's proxy, exactly once each
    for name in ("content-security-policy", "x-frame-options", "strict-transport-security"):
        assert len(ready.headers.get_list(name)) == 1, name
    assert ready.headers["cache-control"] == "no-store"
    assert http.get("/health/live").json() == {"status": "ok", "checks": {}}


def test_classify_the_cat_photo(http: httpx.Client) -> None:
    response = http.post("/api/v1/classify/image", files={"file": ("cat.jpg", payload("cat.jpg"))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"][0]["label"] == "Egyptian cat"
    assert body["model"] == {"name": "efficientnet-lite0", "version": "sha256:579344248a93e230"}
    assert response.headers.get_list("x-request-id") == [body["request_id"]]


def test_classify_coffee_sent_as_base64_json(http: httpx.Client) -> None:
    image = base64.b64encode(payload("coffee.jpg")).decode()
    response = http.post(
        "/api/v1/classify/image",
        json={"image_base64": image, "top_k": 2},
        headers={"X-Request-ID": "client-chosen-id-42"},
    )
    assert response.status_code == 200, response.text
    assert [label["label"] for label in response.json()["labels"]] == ["espresso", "cup"]
    assert response.json()["request_id"] == "client-chosen-id-42"
    assert response.headers.get_list("x-request-id") == ["client-chosen-id-42"]


def test_a_malformed_client_id_is_never_stored_or_logged(http: httpx.Client) -> None:
    spoof = "x" * 2000 + ' "injected": true'
    response = http.post(
        "/api/v1/classify/text", json={"texts": []}, headers={"x-request-id": spoof}
    )
    assert response.status_code == 422
    ours = response.json()["error"]["request_id"]
    assert len(ours) == 32 and int(ours, 16) >= 0  # a fresh id; Serve's header echoes the spoof


def test_classify_texts_zero_and_few_shot(http: httpx.Client) -> None:
    configured = http.post(
        "/api/v1/classify/text", json={"text": "Fantastic quality, would buy again"}
    )
    assert configured.status_code == 200, configured.text
    assert configured.json()["results"][0]["labels"][0]["label"] == "positive"
    few_shot = http.post(
        "/api/v1/classify/text",
        json={
            "texts": ["The goalkeeper saved a penalty.", "Whisk the eggs with sugar."],
            "labels": [
                {"name": "x", "examples": ["the team won the match", "a late goal"]},
                {"name": "y", "examples": ["bake for an hour", "a recipe with butter"]},
            ],
            "top_k": 1,
        },
    )
    assert few_shot.status_code == 200, few_shot.text
    assert [r["labels"][0]["label"] for r in few_shot.json()["results"]] == ["x", "y"]


def test_detect_boxes_in_original_pixels(http: httpx.Client) -> None:
    response = http.post("/api/v1/detect", files={"file": ("a.jpg", payload("astronaut.jpg"))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["width"] == 512
    (face,) = [d for d in body["detections"] if d["label"] == "FACE_FEMALE"]
    x, y, w, h = face["box"]
    assert 150 < x < 200 and 60 < y < 110 and 80 < w < 130 and 80 < h < 130


def test_models_list_versions_batching_and_readiness(http: httpx.Client) -> None:
    models = {m["name"]: m for m in http.get("/api/v1/models").json()["models"]}
    assert models["minilm-zero-shot"]["task"] == "zero-shot-text-classification"
    assert models["minilm-zero-shot"]["labels"] == ["positive", "negative", "neutral"]
    assert models["efficientnet-lite0"]["batching"]["max_batch_size"] == 16
    assert len(models["efficientnet-lite0"]["labels"]) == 1000
    assert all(m["ready"] and m["device"] == "cpu" for m in models.values())


def test_openapi_document(http: httpx.Client) -> None:
    document = http.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/models" in document["paths"]


def test_bad_input_is_4xx_and_leaves_the_replicas_up(http: httpx.Client) -> None:
    cases = [
        ("/api/v1/classify/image", "not_an_image.pdf", 415, "unsupported_media_type"),
        ("/api/v1/classify/image", "truncated.jpg", 422, "corrupt_image"),
        ("/api/v1/detect", "bomb.png", 422, "decompression_bomb"),
        ("/api/v1/detect", "huge_side.png", 422, "image_too_large"),
    ]
    for route, name, status, code in cases:
        response = http.post(route, files={"file": (name, payload(name))})
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    too_big = http.post(
        "/api/v1/classify/image", files={"file": ("big.jpg", b"\xff\xd8\xff" + bytes(21 << 20))}
    )
    assert too_big.status_code == 413
    unknown = http.post("/api/v1/classify/text", json={"text": "hi", "model": "ghost"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_model"
    assert http.get("/health/ready").status_code == 200
    ok = http.post("/api/v1/classify/image", files={"file": ("cat.jpg", payload("cat.jpg"))})
    assert ok.status_code == 200


def test_many_images_in_one_request(http: httpx.Client) -> None:
    files = [("file", ("a", payload("coffee.jpg"))), ("file", ("b", payload("cat.jpg")))]
    response = http.post("/api/v1/classify/images", files=files, data={"top_k": "1"})
    assert response.status_code == 200, response.text
    assert [r["labels"][0]["label"] for r in response.json()["results"]] == [
        "espresso",
        "Egyptian cat",
    ]
    files.append(("file", ("c", payload("bomb.png"))))
    refused = http.post("/api/v1/classify/images", files=files)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "decompression_bomb"
    assert refused.json()["error"]["message"].startswith("image 2:")


def test_a_call_between_deployments_may_carry_more_than_grpcs_default_4_mib(
    http: httpx.Client,
) -> None:
    """32 prepared images are 4.8 MB in one Preprocessor → model call (gRPC in Serve's
    throughput mode); requests sent together share calls, so several such requests make
    one call of many megabytes."""
    files = [("file", (str(i), payload("cat.jpg"))) for i in range(32)]
    with ThreadPoolExecutor(3) as pool:
        responses = list(
            pool.map(lambda _: http.post("/api/v1/classify/images", files=files), range(3))
        )
    assert [r.status_code for r in responses] == [200] * 3, responses[0].text
    assert {r["labels"][0]["label"] for r in responses[0].json()["results"]} == {"Egyptian cat"}


def test_a_bad_image_fails_only_its_own_request_among_requests_sent_together(
    http: httpx.Client,
) -> None:
    """Requests arriving together share the Preprocessor and model calls."""
    bodies = [payload("cat.jpg")] * 6 + [payload("truncated.jpg"), payload("bomb.png")]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(
            pool.map(
                lambda body: http.post("/api/v1/classify/image", files={"file": ("x", body)}),
                bodies,
            )
        )
    assert [r.status_code for r in responses] == [200] * 6 + [422, 422]
    assert {r.json()["labels"][0]["label"] for r in responses[:6]} == {"Egyptian cat"}
    assert [r.json()["error"]["code"] for r in responses[6:]] == [
        "corrupt_image",
        "decompression_bomb",
    ]
    assert all(r.json()["error"]["message"].startswith("image 0:") for r in responses[6:])
