"""API keys: 401 without, 403 with the wrong scope, and one tenant never sees another's data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from pydantic import SecretStr

from modelship.core.metrics import _NoMetrics
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.http.auth import ADDRESS_SCALE, SCOPES
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import JobRunner
from modelship.service.workflow import Workflow
from storage.embedded import EmbeddedPostgres
from storage.keys import KeyStore
from storage.ratelimit import RateLimiter
from storage.services import Services
from tests.conftest import PACKAGED_MODELS, REDIS_URL
from tests.unit.flow import LABELS, assert_error, drain

pytestmark = pytest.mark.asyncio(loop_scope="module")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def auth_settings(job_settings: Settings) -> Settings:
    return job_settings.model_copy(update={"auth_required": True})


@pytest.fixture(scope="module")
async def secured(
    local: LocalLabeler, services: Services, auth_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(
        local,
        local.configs,
        auth_settings,
        workflow=Workflow(services, PACKAGED_MODELS, auth_settings),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="module")
def keys(services: Services, auth_settings: Settings) -> KeyStore:
    return KeyStore(services.db, auth_settings.secret_key.get_secret_value())


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_every_api_route_names_its_scope(secured: httpx.AsyncClient) -> None:
    schema = (await secured.get("/api/v1/openapi.json")).json()
    routes = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/api/") or path.startswith("/health")
        for method in operations
    }
    public = {("GET", "/health/live"), ("GET", "/health/ready")}
    assert routes - public == set(SCOPES)


async def test_health_beyond_the_probes_needs_an_admin_key(
    secured: httpx.AsyncClient, keys: KeyStore
) -> None:
    reader, _ = await keys.create("tenant-h", ["read"], "reader")
    admin, _ = await keys.create("tenant-h", ["admin"], "operator")
    for path in ("/health", "/health/detailed", "/health/metrics", "/health/history"):
        assert_error(await secured.get(path), 401, "unauthorized")
        assert_error(await secured.get(path, headers=bearer(reader)), 403, "insufficient_scope")
        assert (await secured.get(path, headers=bearer(admin))).status_code == 200, path
    for path in ("/health/live", "/health/ready"):
        assert (await secured.get(path)).status_code == 200


async def test_keys_scopes_and_probes(secured: httpx.AsyncClient, keys: KeyStore) -> None:
    assert_error(await secured.get("/api/v1/models"), 401, "unauthorized")
    response = await secured.get("/api/v1/models", headers=bearer("ms_nope_nope"))
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await secured.get("/health/live")).status_code == 200
    assert (await secured.get("/api/v1/openapi.json")).status_code == 200

    reader, _ = await keys.create("tenant-a", ["read"], "reader")
    assert (await secured.get("/api/v1/models", headers=bearer(reader))).status_code == 200
    body = {"text": "hello", "model": "minilm"}
    response = await secured.post("/api/v1/classify/text", json=body, headers=bearer(reader))
    assert_error(response, 403, "insufficient_scope")
    labeler, principal = await keys.create("tenant-a", ["label"], "labeler")
    response = await secured.post("/api/v1/classify/text", json=body, headers=bearer(labeler))
    assert response.status_code == 200
    spec = {
        "name": "x",
        "task": "zero-shot-text-classification",
        "model": "minilm",
        "labels": LABELS,
    }
    response = await secured.post("/api/v1/projects", json=spec, headers=bearer(labeler))
    assert_error(response, 403, "insufficient_scope")

    await keys.revoke(principal.key_id)
    response = await secured.post("/api/v1/classify/text", json=body, headers=bearer(labeler))
    assert_error(response, 401, "unauthorized")


async def test_keys_outlive_a_rotation_of_the_secret_key(
    local: LocalLabeler, services: Services, auth_settings: Settings, keys: KeyStore
) -> None:
    """The secret key rotated, the old one given as MODELSHIP_PREVIOUS_SECRET_KEY: every key
    still works, and one used once is stored under the new secret key, so that it keeps
    working once the previous one is dropped. A key not used in between does not."""
    used, principal = await keys.create("tenant-a", ["read"], "used in the window")
    unused, _ = await keys.create("tenant-a", ["read"], "not used in the window")
    old = auth_settings.secret_key.get_secret_value()

    def served(**secrets: str) -> httpx.AsyncClient:
        settings = auth_settings.model_copy(
            update={name: SecretStr(value) for name, value in secrets.items()}
        )
        workflow = Workflow(services, PACKAGED_MODELS, settings)
        app = create_api(local, local.configs, settings, workflow=workflow)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    async with served(secret_key="rotated-" + old) as without_previous:
        response = await without_previous.get("/api/v1/models", headers=bearer(used))
        assert_error(response, 401, "unauthorized")  # what a rotation did before
    async with served(secret_key="rotated-" + old, previous_secret_key=old) as rotating:
        for _ in range(2):
            response = await rotating.get("/api/v1/models", headers=bearer(used))
            assert response.status_code == 200
    async with services.db.connection() as conn:
        stored = await conn.fetchval(
            "SELECT key_hash FROM api_keys WHERE id = $1", principal.key_id
        )
    assert stored == KeyStore(services.db, "rotated-" + old)._hash(used)
    async with served(secret_key="rotated-" + old) as rotated:
        assert (await rotated.get("/api/v1/models", headers=bearer(used))).status_code == 200
        response = await rotated.get("/api/v1/models", headers=bearer(unused))
        assert_error(response, 401, "unauthorized")


def test_a_previous_secret_key_equal_to_the_secret_key_is_refused() -> None:
    with pytest.raises(ValueError, match="no rotation"):
        Settings(secret_key=SecretStr("same"), previous_secret_key=SecretStr("same"))
    assert Settings(previous_secret_key=SecretStr("")).previous_secret_key is None


async def test_a_key_seen_lately_labels_while_the_database_is_down(
    local: LocalLabeler, auth_settings: Settings
) -> None:
    """Labeling needs no database, but with keys on (every profile but dev) each request
    looked its key up: a PostgreSQL outage refused all labeling. A key this replica
    authenticated lately still labels; one it never saw gets the outage's 503."""
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="modelship-test-")) / "postgres")
    settings = auth_settings.model_copy(update={"database_url": SecretStr(server.start())})
    services = Services.from_settings(settings)
    try:
        app = create_api(
            local, local.configs, settings, workflow=Workflow(services, PACKAGED_MODELS, settings)
        )
        keys = KeyStore(services.db, settings.secret_key.get_secret_value())
        seen, _ = await keys.create("tenant-a", ["label"], "seen")
        unseen, _ = await keys.create("tenant-a", ["label"], "not seen")
        body = {"text": "hello", "model": "minilm"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            labeled = await http.post("/api/v1/classify/text", json=body, headers=bearer(seen))
            assert labeled.status_code == 200
            with server.outage():
                labeled = await http.post("/api/v1/classify/text", json=body, headers=bearer(seen))
                assert labeled.status_code == 200, labeled.text
                refused = await http.post(
                    "/api/v1/classify/text", json=body, headers=bearer(unseen)
                )
                assert_error(refused, 503, "service_unavailable")
    finally:
        await services.close()
        server.stop()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


async def test_a_bad_key_is_refused_before_the_body_is_read(
    secured: httpx.AsyncClient,
) -> None:
    sent = 0

    async def twenty_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(320):
            sent += 1
            yield b" " * 65_536

    response = await secured.post(
        "/api/v1/classify/text",
        content=twenty_megabytes(),
        headers={**bearer("ms_fake_key"), "content-type": "application/json"},
    )
    assert_error(response, 401, "unauthorized")
    assert sent <= 1  # the app never asked for the body


async def test_failed_authentications_are_rate_limited_by_address(
    local: LocalLabeler, services: Services, auth_settings: Settings
) -> None:
    limiter = RateLimiter(REDIS_URL, 1, 1, True, f"auth-test-{uuid4().hex[:8]}")
    workflow = Workflow(services, PACKAGED_MODELS, auth_settings)
    app = create_api(local, local.configs, auth_settings, workflow=workflow, limiter=limiter)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        codes = [
            (await http.get(f"/api/v1/jobs/{uuid4()}", headers=bearer("ms_x_guess"))).status_code
            for _ in range(ADDRESS_SCALE + 1)
        ]
        # every client comes from one proxy address: a valid key is limited per key, so
        # the guesses that spent the address's budget do not lock it out
        key, _ = await KeyStore(services.db, auth_settings.secret_key.get_secret_value()).create(
            "tenant-limit", ["read"], "behind-the-proxy"
        )
        valid = await http.get("/api/v1/projects", headers=bearer(key))
    await limiter.close()
    assert codes == [401] * ADDRESS_SCALE + [429]
    assert valid.status_code == 200, valid.text


async def test_under_a_path_prefix_every_route_still_needs_its_key(
    local: LocalLabeler, services: Services, auth_settings: Settings, keys: KeyStore
) -> None:
    """Serve mounts an app with ``route_prefix: /ms`` as ``root_path`` with the full path;
    routes were looked up by the full path, so no key was asked for there."""
    workflow = Workflow(services, PACKAGED_MODELS, auth_settings)
    app = create_api(local, local.configs, auth_settings, workflow=workflow)
    transport = httpx.ASGITransport(app=app, root_path="/ms")
    key, _ = await keys.create("tenant-prefix", ["read"], "prefixed")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert_error(await http.get("/ms/api/v1/projects"), 401, "unauthorized")
        body = {"name": "x", "task": "zero-shot-text-classification", "model": "minilm"}
        assert_error(await http.post("/ms/api/v1/projects", json=body), 401, "unauthorized")
        assert_error(await http.get("/ms/health/detailed"), 401, "unauthorized")
        listed = await http.get("/ms/api/v1/projects", headers=bearer(key))
        assert listed.status_code == 200, listed.text
        assert listed.headers["cache-control"] == "no-store"


async def test_audit_records_name_the_key_that_acted(
    secured: httpx.AsyncClient, keys: KeyStore, services: Services
) -> None:
    key, _ = await keys.create("tenant-audit", ["admin"], "ci-bot")
    spec = {"name": "audited", "task": "zero-shot-text-classification", "model": "minilm"}
    response = await secured.post(
        "/api/v1/projects", json={**spec, "labels": LABELS}, headers=bearer(key)
    )
    async with services.db.connection() as conn:
        actors = await conn.fetch(
            "SELECT actor FROM audit_events WHERE subject = $1",
            f"project:{response.json()['id']}",
        )
    assert [row["actor"] for row in actors] == ["key:ci-bot"]


async def test_the_reviewer_is_the_key_not_a_request_field(
    secured: httpx.AsyncClient, keys: KeyStore, runner: JobRunner, services: Services
) -> None:
    headers = bearer((await keys.create("tenant-review", ["admin"], "ana"))[0])
    spec = {"name": "reviewed", "task": "zero-shot-text-classification", "model": "minilm"}
    spec |= {"labels": LABELS, "auto_approve_threshold": 1.0}
    project = (await secured.post("/api/v1/projects", json=spec, headers=headers)).json()
    base = f"/api/v1/projects/{project['id']}"
    upload = await secured.post(f"{base}/items", json={"texts": ["a goal"]}, headers=headers)
    item_id = upload.json()["items"][0]["id"]
    await secured.post(f"{base}/jobs", headers=headers)
    await drain(runner)
    review = f"{base}/items/{item_id}/review"
    spoofed = {"action": "approve", "reviewer": "someone-else"}
    assert_error(await secured.post(review, json=spoofed, headers=headers), 422, "invalid_request")

    decided = await secured.post(review, json={"action": "approve"}, headers=headers)
    assert decided.status_code == 200, decided.text
    assert decided.json()["annotation"]["updated_by"] == "key:ana"
    assert [r["reviewer"] for r in decided.json()["reviews"]] == ["key:ana"]
    async with services.db.connection() as conn:
        actor = await conn.fetchval(
            "SELECT actor FROM audit_events WHERE action = 'review.approve' AND subject = $1",
            f"item:{item_id}",
        )
    assert actor == "key:ana"


async def _project_with_everything(
    secured: httpx.AsyncClient, runner: JobRunner, headers: dict[str, str], name: str
) -> tuple[dict[str, Any], list[str]]:
    """A project with an item, a finished job and an export; every URL that reads them."""
    spec = {"name": name, "task": "zero-shot-text-classification", "model": "minilm"}
    project = (
        await secured.post("/api/v1/projects", json={**spec, "labels": LABELS}, headers=headers)
    ).json()
    base = f"/api/v1/projects/{project['id']}"
    upload = await secured.post(
        f"{base}/items", json={"texts": [f"a goal {name}"]}, headers=headers
    )
    item = upload.json()["items"][0]["id"]
    job = (await secured.post(f"{base}/jobs", headers=headers)).json()
    await drain(runner)
    export = (await secured.post(f"{base}/exports", json={"format": "csv"}, headers=headers)).json()
    return project, [
        base,
        f"{base}/items",
        f"{base}/items/{item}",
        f"{base}/stats",
        f"{base}/review-queue",
        f"/api/v1/jobs/{job['id']}",
        f"/api/v1/jobs/{job['id']}/results",
        f"/api/v1/exports/{export['id']}",
        f"/api/v1/exports/{export['id']}/download",
    ]


async def test_a_tenant_never_sees_another_tenants_data(
    secured: httpx.AsyncClient, keys: KeyStore, runner: JobRunner
) -> None:
    owner, _ = await keys.create("tenant-b", ["admin"], "owner")
    stranger, _ = await keys.create("tenant-c", ["admin"], "stranger")
    mine, theirs = bearer(owner), bearer(stranger)
    project, urls = await _project_with_everything(secured, runner, mine, "private")
    base = f"/api/v1/projects/{project['id']}"
    job_url = next(u for u in urls if u.startswith("/api/v1/jobs/"))

    for url in urls:
        assert (await secured.get(url, headers=mine)).status_code in (200, 409), url
        assert (await secured.get(url, headers=theirs)).status_code == 404, url
    assert project["id"] not in {
        p["id"] for p in (await secured.get("/api/v1/projects", headers=theirs)).json()["projects"]
    }
    response = await secured.post(f"{base}/items", json={"texts": ["x"]}, headers=theirs)
    assert_error(response, 404, "unknown_project")
    response = await secured.post(f"{job_url}/cancel", headers=theirs)
    assert_error(response, 404, "unknown_job")


async def test_a_key_bound_to_a_project_sees_only_that_project(
    secured: httpx.AsyncClient, keys: KeyStore, runner: JobRunner
) -> None:
    owner, _ = await keys.create("tenant-d", ["admin"], "owner")
    ours, our_urls = await _project_with_everything(secured, runner, bearer(owner), "ours")
    other, other_urls = await _project_with_everything(secured, runner, bearer(owner), "other")
    # even an admin key, once bound, sees nothing else and creates no project
    bound, principal = await keys.create(
        "tenant-d", ["admin"], "bound", project_ids=[UUID(ours["id"])]
    )
    assert principal.project_ids == {UUID(ours["id"])}
    for url in our_urls:
        assert (await secured.get(url, headers=bearer(bound))).status_code in (200, 409), url
    for url in other_urls:
        response = await secured.get(url, headers=bearer(bound))
        assert response.status_code == 404, url
        assert response.json()["error"]["code"].startswith("unknown_")
    listed = (await secured.get("/api/v1/projects", headers=bearer(bound))).json()["projects"]
    assert [p["id"] for p in listed] == [ours["id"]]
    upload = {"texts": ["more"]}
    other_items = f"/api/v1/projects/{other['id']}/items"
    assert_error(
        await secured.post(other_items, json=upload, headers=bearer(bound)), 404, "unknown_project"
    )
    our_items = f"/api/v1/projects/{ours['id']}/items"
    assert (await secured.post(our_items, json=upload, headers=bearer(bound))).status_code == 201
    spec = {"name": "new", "task": "zero-shot-text-classification", "model": "minilm"}
    created = await secured.post("/api/v1/projects", json=spec, headers=bearer(bound))
    assert_error(created, 403, "project_bound")
    # labeling without a project is not bound
    labeled = await secured.post(
        "/api/v1/classify/text", json={"texts": ["a goal"], "labels": LABELS}, headers=bearer(bound)
    )
    assert labeled.status_code == 200, labeled.text


def test_the_cli_creates_a_key_that_works_once_shown(
    auth_settings: Settings, tmp_path: Path
) -> None:
    assert auth_settings.database_url is not None and auth_settings.redis_url is not None
    env = {
        **os.environ,
        "MODELSHIP_DATA_DIR": str(tmp_path),
        "MODELSHIP_DATABASE_URL": auth_settings.database_url.get_secret_value(),
        "MODELSHIP_REDIS_URL": auth_settings.redis_url.get_secret_value(),
    }
    project, tenant = str(uuid4()), f"cli-{uuid4().hex[:8]}"

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "modelship.ops.cli", "keys", *args]
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done

    done = keys("create", "--scope", "read", "--project", project, "--tenant", tenant)
    key = done.stdout.strip()
    assert key.startswith("ms_") and "stored hashed" in done.stderr
    # an operator finds a leaked key by how it starts, and revokes it by its id
    keys("create", "--scope", "admin", "--tenant", tenant, "--name", "other")
    listed = json.loads(keys("list", "--tenant", tenant, "--json").stdout)
    assert [(k["name"], k["scopes"], k["revoked_at"]) for k in listed] == [
        ("", ["read"], None),
        ("other", ["admin"], None),
    ]
    assert key.startswith(f"ms_{listed[0]['prefix']}_") and listed[0]["project_ids"] == [project]
    assert key not in json.dumps(listed) and "hash" not in json.dumps(listed)
    table = keys("list", "--tenant", tenant).stdout
    assert listed[0]["key_id"] in table and f"ms_{listed[0]['prefix']}_" in table
    keys("revoke", listed[1]["key_id"])
    assert [k["name"] for k in json.loads(keys("list", "--tenant", tenant, "--json").stdout)] == [
        ""
    ]
    every = json.loads(keys("list", "--tenant", tenant, "--revoked", "--json").stdout)
    assert [k["revoked_at"] is not None for k in every] == [False, True]

    import asyncio

    async def check() -> None:
        services = Services.from_settings(auth_settings)
        try:
            store = KeyStore(services.db, auth_settings.secret_key.get_secret_value())
            principal = await store.authenticate(key)
            assert principal is not None and principal.scopes == {"read"}
            assert principal.project_ids == {UUID(project)}
            async with services.db.connection() as conn:
                stored = await conn.fetchval(
                    "SELECT count(*) FROM api_keys WHERE key_hash = $1", key
                )
            assert stored == 0  # never the key itself
        finally:
            await services.close()

    asyncio.run(check())


class _Requests(_NoMetrics):
    """Metrics that keep the requests they count."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.seen.append((route, method, status))


async def test_a_request_refused_before_routing_is_counted_by_its_route(
    local: LocalLabeler, services: Services, auth_settings: Settings
) -> None:
    """A 401 (or 403, 429) is answered before the router matches a route: the metrics
    counted it as route "unmatched", with the 404s, and the dashboard lost it."""
    metrics = _Requests()
    app = create_api(
        local,
        local.configs,
        auth_settings,
        workflow=Workflow(services, PACKAGED_MODELS, auth_settings),
        metrics=metrics,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert_error(await http.get(f"/api/v1/jobs/{uuid4()}"), 401, "unauthorized")
        assert (await http.get("/api/v1/nothing-here")).status_code == 404
    assert metrics.seen == [("/api/v1/jobs/{job_id}", "GET", 401), ("unmatched", "GET", 404)]
