"""The HTTP layer driven in-process over ASGI, with the real models in a LocalBackend."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelship.core.config import ModelConfig, Task
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.labeling import LocalLabeler
from tests.conftest import PACKAGED_MODELS, payload
from tests.unit.flow import assert_error

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def local(settings: Settings) -> LocalLabeler:
    return LocalLabeler(PACKAGED_MODELS, settings)


@pytest.fixture
async def client(local: LocalLabeler) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(local, local.configs, Settings(max_body_bytes=2_000_000))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_classify_image_multipart(client: httpx.AsyncClient) -> None:
    files = {"file": ("whatever.bin", payload("cat.jpg"), "application/octet-stream")}
    response = await client.post("/api/v1/classify/image", files=files, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"][0]["label"] == "Egyptian cat"
    assert len(body["labels"]) == 3
    assert body["model"]["name"] == "efficientnet-lite0"
    assert body["model"]["version"].startswith("sha256:")
    assert body["image"] == {"width": 451, "height": 300, "media_type": "image/jpeg"}
    assert body["request_id"] == response.headers["x-request-id"]


async def test_classify_image_json_base64_keeps_the_callers_request_id(
    client: httpx.AsyncClient,
) -> None:
    image = base64.b64encode(payload("coffee.jpg")).decode()
    response = await client.post(
        "/api/v1/classify/image",
        json={"image_base64": image},
        headers={"X-Request-ID": "caller-id-1234"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] == "espresso"
    assert response.json()["request_id"] == "caller-id-1234"


async def test_classify_many_images_in_one_request(client: httpx.AsyncClient) -> None:
    files = [("file", ("a", payload("cat.jpg"))), ("file", ("b", payload("coffee.jpg")))]
    response = await client.post("/api/v1/classify/images", files=files, data={"top_k": "1"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["labels"][0]["label"] for r in results] == ["Egyptian cat", "espresso"]
    assert [r["image"]["width"] for r in results] == [451, 600]
    encoded = [base64.b64encode(payload(n)).decode() for n in ("coffee.jpg", "cat_small.png")]
    as_json = await client.post("/api/v1/classify/images", json={"images_base64": encoded})
    assert as_json.status_code == 200, as_json.text
    assert [r["image"]["media_type"] for r in as_json.json()["results"]] == [
        "image/jpeg",
        "image/png",
    ]


async def test_one_bad_image_fails_the_batch_and_is_named(client: httpx.AsyncClient) -> None:
    files = [("file", ("a", payload("cat.jpg"))), ("file", ("b", payload("truncated.jpg")))]
    response = await client.post("/api/v1/classify/images", files=files)
    assert_error(response, 422, "corrupt_image")
    assert response.json()["error"]["message"].startswith("image 1:")
    too_many = [base64.b64encode(payload("cat_small.png")).decode()] * 33
    response = await client.post("/api/v1/classify/images", json={"images_base64": too_many})
    assert_error(response, 422, "too_many_images")
    many_files = [("file", ("a", payload("cat_small.png")))] * 33
    response = await client.post("/api/v1/classify/images", files=many_files)
    assert_error(response, 422, "too_many_images")
    single = await client.post("/api/v1/classify/image", files=many_files[:2])
    assert_error(single, 422, "too_many_images")
    broken = await client.post(
        "/api/v1/classify/image",
        content=b"--xyz\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 422, broken.text


async def test_malformed_request_ids_are_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": "bad id\twith tabs"})
    assert response.headers["x-request-id"] != "bad id\twith tabs"
    assert len(response.headers["x-request-id"]) == 32


async def test_a_replaced_request_id_is_the_one_every_log_record_carries(
    local: LocalLabeler, caplog: pytest.LogCaptureFixture
) -> None:
    """Serve's log records take the request id from Serve's request context, which holds a
    malformed client id as sent: the body had a fresh id, the logs the malformed one. The
    filter here is the one Serve's replica log handlers run."""
    from ray.serve._private.logging_utils import ServeContextFilter

    app = create_api(local, local.configs, Settings(slow_request_s=0.0))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        handler = caplog.handler
        handler.addFilter(ServeContextFilter())
        try:
            with caplog.at_level("WARNING", logger="modelship.http"):
                response = await http.get("/api/v1/jobs/nope", headers={"X-Request-ID": "bad id!"})
        finally:
            handler.removeFilter(handler.filters[-1])
    given = response.json()["error"]["request_id"]
    assert given != "bad id!" and response.headers["x-request-id"] == given
    slow = [r for r in caplog.records if r.getMessage() == "slow request"]
    assert slow and all(getattr(r, "request_id", None) == given for r in slow)


async def test_classify_texts_with_request_labels(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/classify/text",
        json={
            "texts": ["I love this phone, the battery lasts for days", "The bank raised rates"],
            "labels": [
                {"name": "review", "description": "a customer's review of a phone they bought"},
                {"name": "economy", "examples": ["inflation rose", "the stock market fell"]},
            ],
            "top_k": 1,
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert [r["labels"][0]["label"] for r in results] == ["review", "economy"]


async def test_classify_text_uses_the_configured_labels(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/classify/text", json={"text": "This is terrible, I hate it and want a refund."}
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["labels"][0]["label"] == "negative"


async def test_detect_finds_the_astronauts_face(client: httpx.AsyncClient) -> None:
    files = {"file": ("a.jpg", payload("astronaut.jpg"), "image/jpeg")}
    response = await client.post("/api/v1/detect", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    faces = [d for d in body["detections"] if d["label"] == "FACE_FEMALE"]
    assert faces
    x, y, w, h = faces[0]["box"]
    assert 0 <= x and 0 <= y and x + w <= 512 and y + h <= 512 and w > 20 and h > 20


async def test_models_and_health(client: httpx.AsyncClient) -> None:
    models = (await client.get("/api/v1/models")).json()["models"]
    assert [m["name"] for m in models] == ["efficientnet-lite0", "minilm", "nudenet"]
    assert all(m["ready"] and m["version"].startswith("sha256:") for m in models)
    assert models[1]["batching"] == {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}
    assert (await client.get("/health/live")).json()["status"] == "ok"
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == dict.fromkeys(
        ("efficientnet-lite0", "minilm", "nudenet"), "ready"
    )


async def test_openapi_is_generated_from_the_schemas(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    for path in ("/api/v1/classify/image", "/api/v1/classify/text", "/api/v1/detect"):
        assert "post" in document["paths"][path]
    schemas = document["components"]["schemas"]
    assert {"ClassifyImageResponse", "TextRequest", "ImageRequest", "ErrorResponse"} <= set(schemas)
    image_body = document["paths"]["/api/v1/classify/image"]["post"]["requestBody"]["content"]
    assert set(image_body) == {"application/json", "multipart/form-data"}
    assert schemas["TextRequest"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("not_an_image.pdf", 415, "unsupported_media_type"),
        ("truncated.jpg", 422, "corrupt_image"),
        ("garbage_after_magic.png", 422, "corrupt_image"),
        ("bomb.png", 422, "decompression_bomb"),
        ("zero_width.png", 422, "corrupt_image"),
        ("huge_side.png", 422, "image_too_large"),
    ],
)
async def test_bad_images(client: httpx.AsyncClient, name: str, status: int, code: str) -> None:
    for route in ("/api/v1/classify/image", "/api/v1/detect"):
        response = await client.post(route, files={"file": (name, payload(name))})
        assert_error(response, status, code)


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = b"\xff\xd8\xff" + b"\x00" * 2_100_000
    response = await client.post("/api/v1/classify/image", files={"file": ("big.jpg", big)})
    assert_error(response, 413, "payload_too_large")


async def test_a_body_that_trickles_in_is_cut_off_at_the_body_timeout(
    local: LocalLabeler,
) -> None:
    """The deadline and the trickle's pauses are on the event loop's clock: 0.1 s apart, at
    most 5 pieces come in the 0.5 s, however late the loop runs (a bound on the seconds
    taken could fail on a loaded machine)."""
    app = create_api(local, local.configs, Settings(body_timeout_s=0.5))
    trickled = 0

    async def trickle() -> AsyncIterator[bytes]:
        nonlocal trickled
        yield b'{"texts": ["'
        for _ in range(40):
            await asyncio.sleep(0.1)
            trickled += 1
            yield b"slow "
        yield b'"]}'

    loop = asyncio.get_running_loop()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        started = loop.time()
        response = await http.post(
            "/api/v1/classify/text",
            content=trickle(),
            headers={"content-type": "application/json", "x-request-timeout-seconds": "0"},
        )
        assert_error(response, 408, "body_timeout")
        assert loop.time() - started >= 0.5 and trickled <= 5
        assert (await http.post("/api/v1/classify/text", json={"text": "quick"})).status_code == 200


class SlowLabeler(LocalLabeler):
    """The real labeler, a little slower: requests overlap."""

    async def label(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await super().label(*args, **kwargs)


async def test_past_its_capacity_a_replica_sheds_with_retry_after(local: LocalLabeler) -> None:
    slow = SlowLabeler(local.configs, Settings())
    app = create_api(slow, slow.configs, Settings(max_labeling_items=3))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        answers = await asyncio.gather(
            *(http.post("/api/v1/classify/text", json={"text": f"match {i}"}) for i in range(10))
        )
        assert sorted(r.status_code for r in answers) == [200] * 3 + [503] * 7
        for shed in (r for r in answers if r.status_code == 503):
            assert_error(shed, 503, "overloaded")
            assert shed.headers["retry-after"] == "1"
        many = await http.post("/api/v1/classify/text", json={"texts": ["a"] * 5})
        assert many.status_code == 200  # alone, a request larger than the limit still runs


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"text": "   "}, 422, "empty_text"),
        ({"texts": ["ok"] * 65}, 422, "too_many_texts"),
        ({"texts": []}, 422, "invalid_request"),
        ({"text": "a", "texts": ["b"]}, 422, "invalid_request"),
        ({"text": "a", "surprise": 1}, 422, "invalid_request"),
        ({"text": "a", "model": "nope"}, 404, "unknown_model"),
        ({"text": "a", "model": "efficientnet-lite0"}, 422, "wrong_task"),
        ({"text": "a", "labels": [{"name": "x"}, {"name": "x"}]}, 422, "invalid_request"),
        ({"text": "a", "labels": [{"name": "a\x07b"}]}, 422, "invalid_request"),
        (  # 20 labels x (1 name + 31 examples) = 640 texts to embed, over the 256 allowed
            {"text": "a", "labels": [{"name": f"l{i}", "examples": ["e"] * 31} for i in range(20)]},
            422,
            "too_many_label_texts",
        ),
    ],
)
async def test_bad_text_requests(
    client: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    assert_error(await client.post("/api/v1/classify/text", json=body), status, code)


async def test_other_bad_requests(client: httpx.AsyncClient) -> None:
    route = "/api/v1/classify/image"
    assert_error(
        await client.post(route, content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(await client.post(route, json={"image_base64": "***"}), 422, "invalid_base64")
    assert_error(
        await client.post(route, data={"top_k": "1"}, files={"other": ("a", b"b")}), 422, "no_file"
    )
    assert_error(
        await client.post(
            route, content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
        "invalid_request",
    )
    not_utf8 = await client.post(  # was a 400 outside the document (the API fuzz drill)
        "/api/v1/classify/text", content=b"\xff", headers={"content-type": "application/json"}
    )
    assert_error(not_utf8, 422, "invalid_request")
    files = {"file": ("c.jpg", payload("cat.jpg"))}
    assert_error(
        await client.post(route, files=files, data={"model": "ghost"}), 404, "unknown_model"
    )
    assert_error(await client.post(route, files=files, data={"top_k": "0"}), 422, "invalid_request")
    twice = {"model": ["efficientnet-lite0", "efficientnet-lite0"]}  # found by the API fuzz
    assert_error(await client.post(route, files=files, data=twice), 422, "invalid_request")
    assert_error(await client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(await client.get(route), 405, "method_not_allowed")


@pytest.fixture(scope="module")
def text_models_client(
    tiny_text_classifier_dir: Path, tiny_ner_dir: Path, settings: Settings
) -> httpx.AsyncClient:
    configs = [
        ModelConfig(
            name="sentiment", task=Task.text_classification, source=str(tiny_text_classifier_dir)
        ),
        ModelConfig(name="ner", task=Task.token_classification, source=str(tiny_ner_dir)),
    ]
    app = create_api(LocalLabeler(configs, settings), configs, settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_text_classification_route_with_any_hf_classifier(
    text_models_client: httpx.AsyncClient,
) -> None:
    response = await text_models_client.post(
        "/api/v1/classify/text", json={"texts": ["john lives in paris", "very good"], "top_k": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "sentiment"
    for result in body["results"]:
        assert len(result["labels"]) == 2
        assert {label["label"] for label in result["labels"]} <= {"negative", "neutral", "positive"}


async def test_entities_route_returns_character_offsets(
    text_models_client: httpx.AsyncClient,
) -> None:
    text = "john lives in paris, france"
    response = await text_models_client.post("/api/v1/entities", json={"text": text})
    assert response.status_code == 200, response.text
    for entity in response.json()["results"][0]["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["label"] in {"PER", "LOC"}
    wrong = await text_models_client.post(
        "/api/v1/classify/text", json={"text": "x", "model": "ner"}
    )
    assert wrong.status_code == 422
    none = await text_models_client.post(
        "/api/v1/detect", files={"file": ("c.jpg", payload("cat.jpg"))}
    )
    assert none.status_code == 404
    assert none.json()["error"]["code"] == "no_model"


SECURITY = {
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "permissions-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "content-security-policy",
}


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    responses = [
        await client.get("/health/live"),
        await client.get("/api/v1/models"),
        await client.get("/api/v1/nope"),
        await client.post("/api/v1/classify/text", json={"text": ""}),
        await client.post("/api/v1/classify/text", content=b"x" * 3_000_000),
    ]
    assert [r.status_code for r in responses] == [200, 200, 404, 422, 413]
    for response in responses:
        assert SECURITY <= set(response.headers), response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"
    docs = await client.get("/api/v1/docs")
    assert docs.status_code == 200
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


async def test_cors_answers_only_allowlisted_origins(local: LocalLabeler) -> None:
    app = create_api(local, local.configs, Settings(cors_origins=["https://labels.example"]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        preflight = {"access-control-request-method": "POST"}
        allowed = await http.options(
            "/api/v1/classify/text", headers={"origin": "https://labels.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://labels.example"
        other = await http.options(
            "/api/v1/classify/text", headers={"origin": "https://evil.example", **preflight}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        plain = await http.get("/api/v1/models", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
    # no allowlist: no CORS at all
    none = await client_without_cors(local)
    assert "access-control-allow-origin" not in none.headers


async def client_without_cors(local: LocalLabeler) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_api(local, local.configs, Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get("/api/v1/models", headers={"origin": "https://labels.example"})
