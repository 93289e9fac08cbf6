"""Handles bound in a driver call as the cluster is set up once remade in a replica."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from modelship.service.serving import cluster_handle


@serve.deployment
class Echo:
    def __call__(self, word: str) -> str:
        return word


@serve.deployment
class Caller:
    def __init__(self, echo: DeploymentHandle) -> None:
        self._bound = echo
        self._remade = cluster_handle(echo)

    async def transports(self) -> dict[str, bool]:
        """Whether each handle's call went as a Ray actor call (by reference)."""
        bound, remade = self._bound.remote("bound"), self._remade.remote("remade")
        assert (await bound, await remade) == ("bound", "remade")
        return {"bound": bound.by_reference, "remade": remade.by_reference}


def test_a_handle_remade_in_the_replica_calls_over_grpc(serve_cluster: int) -> None:
    """The session's cluster runs in Serve's throughput mode (gRPC between deployments);
    this test process imported Serve before, so the handle it binds keeps actor calls."""
    caller = serve.run(Caller.bind(Echo.bind()), name="transport", route_prefix=None)
    try:
        assert caller.transports.remote().result() == {"bound": True, "remade": False}
    finally:
        serve.delete("transport")
