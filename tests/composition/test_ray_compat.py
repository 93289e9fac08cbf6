"""Every use of Ray's private API (modelship.core.ray_compat), each proven on the real
cluster: a Ray upgrade that changes one fails here first."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from ray import serve
from ray.serve.handle import DeploymentHandle

from modelship.core import ray_compat
from modelship.service.serving import cluster_handle


@serve.deployment
class Echo:
    def __call__(self, word: str) -> str:
        return word

    def request_id(self) -> str:
        return _serve_request_id()


def _serve_request_id() -> str:
    from ray.serve import context

    return context._get_serve_request_context().request_id


@serve.deployment(max_ongoing_requests=8)
class Caller:
    def __init__(self, echo: DeploymentHandle) -> None:
        self._bound = echo
        self._remade = cluster_handle(echo)

    async def transports(self) -> dict[str, bool]:
        """Whether each handle's call went as a Ray actor call (by reference)."""
        bound, remade = self._bound.remote("bound"), self._remade.remote("remade")
        assert (await bound, await remade) == ("bound", "remade")
        return {"bound": bound.by_reference, "remade": remade.by_reference}

    async def scoped_id(self, request_id: str) -> tuple[str, str | None, str]:
        """The id the callee sees inside ``request_scope``, ours inside, and Serve's after."""
        from modelship.core.context import current_request_id, request_scope  # not pickled

        with request_scope(request_id):
            seen = await self._remade.request_id.remote()
            ours = current_request_id.get()
        return seen, ours, _serve_request_id()

    def serve_logger_has_handlers(self) -> bool:
        return bool(logging.getLogger(ray_compat.serve_logger_name()).handlers)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.2)
    async def batched_ids(self, calls: list[int]) -> list[list[str]]:
        ids = ray_compat.batch_request_ids()
        return [ids for _ in calls]


@pytest.fixture(scope="module")
def caller(serve_cluster: int) -> Iterator[DeploymentHandle]:
    """One app for every test here (deploying costs seconds on 2 cores)."""
    handle = serve.run(Caller.bind(Echo.bind()), name="ray-compat", route_prefix=None)
    yield handle
    serve.delete("ray-compat")


def test_a_handle_remade_in_the_replica_calls_over_grpc(caller: DeploymentHandle) -> None:
    """deployment_handle: the session's cluster runs in Serve's throughput mode (gRPC
    between deployments); this test process imported Serve before, so the handle it binds
    keeps actor calls."""
    assert caller.transports.remote().result() == {"bound": True, "remade": False}


def test_request_scope_sets_serve_request_id_for_calls_and_restores_it(
    caller: DeploymentHandle,
) -> None:
    """serve_request_id: calls made inside the scope carry its id; after it, Serve's
    context is the caller's own again."""
    seen, ours, after = caller.scoped_id.remote("job-42").result()
    assert (seen, ours) == ("job-42", "job-42")
    assert after != "job-42"
    assert caller.serve_logger_has_handlers.remote().result()  # serve_logger_name


def test_batch_request_ids_lists_every_call_in_the_batch(caller: DeploymentHandle) -> None:
    """batch_request_ids: one id per call of the running ``@serve.batch`` batch."""
    results = [r.result() for r in [caller.batched_ids.remote(i) for i in range(3)]]
    assert all(len(ids) >= 1 and all(ids) for ids in results)
    assert any(len(ids) > 1 for ids in results)  # some calls shared a batch
