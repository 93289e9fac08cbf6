"""The HTTP surface: a FastAPI (Starlette) app that parses, validates and delegates.

No model code and no Ray here: handlers call a ``Labeler`` (the Serve Ingress, sharing
calls over deployment handles, or ``LocalLabeler`` in-process). FastAPI generates the
OpenAPI document from the pydantic models in ``modelship.http.schemas``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from modelship.core.config import ModelConfig, Task
from modelship.core.errors import InvalidInput, ModelShipError, UnsupportedMediaType
from modelship.core.inputs import check_labels, check_texts, parse_model
from modelship.core.labeling import (
    ClassifyImageResponse,
    ClassifyImagesResponse,
    ClassifyTextResponse,
    DetectResponse,
    EntitiesResponse,
    ImageLabels,
    ModelRef,
    ModelsResponse,
    TextEntities,
    TextLabels,
)
from modelship.core.messages import ItemOptions, ItemResult
from modelship.core.metrics import NO_METRICS, Metrics
from modelship.core.settings import Settings
from modelship.http.auth import Authenticator, AuthMiddleware
from modelship.http.errors import error_response
from modelship.http.health import HealthMonitor, RequestWindow, system_resources
from modelship.http.middleware import (
    BodyLimitMiddleware,
    ErrorResponseMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
    request_id,
)
from modelship.http.projects import project_routes
from modelship.http.review import review_routes
from modelship.http.schemas import (
    ErrorResponse,
    HealthResponse,
    ImageParams,
    ImageRequest,
    ImagesRequest,
    TextRequest,
)
from modelship.service.labeling import Admission, Labeler, ModelInfos, pick_model
from modelship.service.workflow import Workflow
from storage.keys import KeyStore
from storage.ratelimit import RateLimiter

_INFO_TIMEOUT_S = 2.0  # a model replica that does not describe itself this fast is busy or down


def _request_results(
    payloads: Sequence[bytes | str], results: Sequence[ItemResult | ModelShipError]
) -> list[ItemResult]:
    """One request's results, or the error of its first item that failed (naming the image:
    a request may carry several). The one place per-item errors become a request's error."""
    for index, (payload, result) in enumerate(zip(payloads, results, strict=True)):
        if isinstance(result, ModelShipError):
            if isinstance(payload, bytes):
                result.message = f"image {index}: {result.message}"
                result.args = (result.message, *result.args[1:])
            raise result
    return [result for result in results if isinstance(result, ItemResult)]


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("an image is not valid base64", "invalid_base64") from None


def _check_count(count: int, max_files: int) -> None:
    if count > max_files:
        raise InvalidInput(f"{count} images; at most {max_files} per request", "too_many_images")


async def _read_images(
    request: Request, json_model: type[ImageRequest] | type[ImagesRequest], max_files: int
) -> tuple[list[bytes], ImageParams]:
    """Multipart (``file`` fields plus form fields) or JSON with base64; 415 otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=max_files + 1, max_fields=8)
        except HTTPException as exc:
            if exc.status_code != 400:  # e.g. 413 from the body limit
                raise
            raise InvalidInput(str(exc.detail), "invalid_multipart") from None
        try:
            uploads = [u for u in form.getlist("file") if isinstance(u, UploadFile)]
            if not uploads:
                raise InvalidInput("multipart field 'file' with the image is missing", "no_file")
            _check_count(len(uploads), max_files)
            images = [await upload.read() for upload in uploads]
            fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
            repeated = sorted(k for k in fields if len(form.getlist(k)) > 1)
            if repeated:
                message = f"form field {repeated[0]!r} given more than once"
                raise InvalidInput(message, "invalid_request")
        finally:
            await form.close()
        return images, parse_model(ImageParams, fields)
    if content_type == "application/json":
        body = parse_model(json_model, await request.body())
        encoded = [body.image_base64] if isinstance(body, ImageRequest) else body.images_base64
        _check_count(len(encoded), max_files)
        return [_b64decode(text) for text in encoded], body
    raise UnsupportedMediaType(
        f"send multipart/form-data or application/json, not {content_type or 'nothing'}"
    )


def _image_body(schema_ref: str) -> dict[str, Any]:
    """OpenAPI for routes that read the body themselves (JSON or multipart)."""
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "model": {"type": "string"},
            "top_k": {"type": "integer"},
            "score_threshold": {"type": "number"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}},
                "multipart/form-data": {"schema": form},
            },
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 413, 415, 422, 429, 503)
}


def create_api(
    labeler: Labeler,
    configs: Sequence[ModelConfig],
    settings: Settings,
    behind_serve_proxy: bool = False,
    workflow: Workflow | None = None,
    metrics: Metrics = NO_METRICS,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """Build the ASGI app for one ingress replica, labeling with ``labeler`` the models in
    ``configs`` (project routes need a ``workflow``;
    ``limiter`` rate-limits every route under ``/api``: per address, then per key and
    route)."""

    previous = settings.previous_secret_key
    keys = (
        KeyStore(
            workflow.services.db,
            settings.secret_key.get_secret_value(),
            previous.get_secret_value() if previous else None,
            settings.auth_outage_grace_s,
        )
        if workflow
        else None
    )
    authenticate = Authenticator(keys, settings, workflow.catalog if workflow else None)

    app = FastAPI(
        title="ModelShip",
        version="0.1.0",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        responses=_ERRORS,
        separate_input_output_schemas=False,
    )
    app.state.settings = settings
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
        timeout_s=settings.body_timeout_s,
        upload_timeout_s=settings.upload_body_timeout_s,
    )
    app.add_middleware(AuthMiddleware, authenticate=authenticate, limiter=limiter)
    app.add_middleware(ErrorResponseMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["content-type", "idempotency-key", "x-request-id", "authorization"],
            expose_headers=["x-request-id", "location", "retry-after"],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)
    window = RequestWindow()
    app.add_middleware(
        MetricsMiddleware, metrics=metrics, window=window, slow_s=settings.slow_request_s
    )
    # outermost: every record of the request, the slow-request line too, has its id
    app.add_middleware(RequestIdMiddleware, set_header=not behind_serve_proxy)
    for exc_class in (Exception, ModelShipError, RequestValidationError, HTTPException):
        app.add_exception_handler(exc_class, _error_handler)

    describe_models = ModelInfos(labeler, configs, _INFO_TIMEOUT_S)

    monitor = HealthMonitor(describe_models, workflow.services if workflow else None)

    admission = Admission(settings.max_labeling_items, settings.model_call_timeout_s)

    async def label(
        config: ModelConfig, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult]:
        async with admission.admit(len(payloads)):
            results = await labeler.label(config.name, payloads, options)
        return _request_results(payloads, results)

    async def label_images(
        request: Request,
        json_model: type[ImageRequest] | type[ImagesRequest],
        task: Task,
        max_files: int = 1,
    ) -> tuple[ModelConfig, list[ItemResult]]:
        images, params = await _read_images(request, json_model, max_files)
        config = pick_model(configs, params.model, {task})
        options = ItemOptions(
            top_k=params.top_k or config.top_k,
            score_threshold=(
                params.score_threshold
                if params.score_threshold is not None
                else config.score_threshold
            ),
        )
        return config, await label(config, list(images), options)

    async def label_texts(
        body: TextRequest, tasks: set[Task]
    ) -> tuple[ModelConfig, list[ItemResult]]:
        config = pick_model(configs, body.model, tasks)
        texts = body.all_texts
        check_texts(texts, settings)
        check_labels(body.labels, settings)
        labels = body.labels or config.labels
        options = ItemOptions(
            top_k=body.top_k or config.top_k,
            score_threshold=config.score_threshold,
            labels=tuple(labels) if labels else None,
        )
        return config, await label(config, list(texts), options)

    @app.get("/health/live", response_model=HealthResponse, tags=["health"])
    async def live() -> HealthResponse:
        return HealthResponse(status="ok")

    # Redis only caches and rate-limits: down, a replica still serves, unless the limiter
    # then refuses every request. Readiness takes replicas out of the load balancer, so a
    # Redis outage must not take out all of them.
    optional = (
        set() if settings.rate_limit_per_minute and not settings.rate_limit_fail_open else {"redis"}
    )

    @app.get(
        "/health/ready",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse}},
        tags=["health"],
    )
    async def ready() -> Any:
        infos = await describe_models()
        checks = {info.name: "ready" if info.ready else "not_ready" for info in infos}
        if workflow is not None:
            for name, up in (await workflow.check_services()).items():
                checks[name] = "ready" if up else "unavailable"
        ok = all(check == "ready" for name, check in checks.items() if name not in optional)
        body = HealthResponse(status="ready" if ok else "not_ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/health", tags=["health"])
    async def health() -> JSONResponse:
        """Each check's status; 503 only when a service is down (a model loading: degraded)."""
        report = await monitor.check()
        body = {"status": report.status, "checks": {c.name: c.status for c in report.checks}}
        return JSONResponse(body, status_code=503 if report.status == "unhealthy" else 200)

    @app.get("/health/detailed", tags=["health"])
    async def health_detailed() -> JSONResponse:
        """Every check with its latency, and the machine's resources."""
        report = await monitor.check()
        body = {
            **report.model_dump(mode="json"),
            "uptime_s": monitor.uptime_s(),
            "system": await system_resources(str(settings.data_dir.anchor or "/")),
        }
        return JSONResponse(body, status_code=503 if report.status == "unhealthy" else 200)

    @app.get("/health/metrics", tags=["health"])
    async def health_metrics() -> dict[str, Any]:
        """This replica's recent requests (statuses, latency percentiles) and resources;
        Prometheus has the full picture."""
        return {
            "uptime_s": monitor.uptime_s(),
            "requests": window.summary(),
            "system": await system_resources(str(settings.data_dir.anchor or "/")),
        }

    @app.get("/health/history", tags=["health"])
    async def health_history() -> dict[str, Any]:
        """The latest checks this replica ran, oldest first."""
        return {"reports": [report.model_dump(mode="json") for report in monitor.history]}

    @app.get("/api/v1/models", response_model=ModelsResponse, tags=["models"])
    async def models() -> ModelsResponse:
        return ModelsResponse(models=await describe_models())

    @app.post(
        "/api/v1/classify/image",
        response_model=ClassifyImageResponse,
        openapi_extra=_image_body("ImageRequest"),
        tags=["label"],
    )
    async def classify_image(request: Request) -> ClassifyImageResponse:
        config, (result,) = await label_images(request, ImageRequest, Task.image_classification)
        assert result.image is not None
        return ClassifyImageResponse(
            request_id=request_id(request),
            model=ModelRef(name=config.name, version=result.version),
            image=result.image,
            labels=result.output,  # type: ignore[arg-type]
        )

    @app.post(
        "/api/v1/classify/images",
        response_model=ClassifyImagesResponse,
        openapi_extra=_image_body("ImagesRequest"),
        tags=["label"],
    )
    async def classify_images(request: Request) -> ClassifyImagesResponse:
        config, results = await label_images(
            request, ImagesRequest, Task.image_classification, settings.max_images_per_request
        )
        return ClassifyImagesResponse(
            request_id=request_id(request),
            model=ModelRef(name=config.name, version=results[0].version),
            results=[
                ImageLabels(index=i, image=r.image, labels=r.output)  # type: ignore[arg-type]
                for i, r in enumerate(results)
            ],
        )

    @app.post(
        "/api/v1/detect",
        response_model=DetectResponse,
        openapi_extra=_image_body("ImageRequest"),
        tags=["label"],
    )
    async def detect(request: Request) -> DetectResponse:
        config, (result,) = await label_images(request, ImageRequest, Task.object_detection)
        assert result.image is not None
        return DetectResponse(
            request_id=request_id(request),
            model=ModelRef(name=config.name, version=result.version),
            image=result.image,
            detections=result.output,  # type: ignore[arg-type]
        )

    @app.post("/api/v1/classify/text", response_model=ClassifyTextResponse, tags=["label"])
    async def classify_text(body: TextRequest, request: Request) -> ClassifyTextResponse:
        tasks = {Task.zero_shot_text_classification, Task.text_classification}
        config, results = await label_texts(body, tasks)
        return ClassifyTextResponse(
            request_id=request_id(request),
            model=ModelRef(name=config.name, version=results[0].version),
            results=[
                TextLabels(index=i, labels=r.output)  # type: ignore[arg-type]
                for i, r in enumerate(results)
            ],
        )

    @app.post("/api/v1/entities", response_model=EntitiesResponse, tags=["label"])
    async def entities(body: TextRequest, request: Request) -> EntitiesResponse:
        config, results = await label_texts(body, {Task.token_classification})
        return EntitiesResponse(
            request_id=request_id(request),
            model=ModelRef(name=config.name, version=results[0].version),
            results=[
                TextEntities(index=i, entities=r.output)  # type: ignore[arg-type]
                for i, r in enumerate(results)
            ],
        )

    app.include_router(project_routes(workflow, settings))
    app.include_router(review_routes(workflow))
    _register_schemas(app, [ImageRequest, ImagesRequest])
    return app


async def _error_handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request_id(request))


def _register_schemas(app: FastAPI, models: list[type[ImageParams]]) -> None:
    """Add models FastAPI cannot see (their bodies are read by hand) to the components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            components[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
