"""How Ray is started for ModelShip (Serve's fast path, the Python proxy for TLS), and what
a failed call between deployments answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.exceptions import ActorDiedError, NodeDiedError, ObjectLostError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)

from modelship.core.errors import Overloaded
from modelship.ops.ray_env import free_port, private_haproxy, ray_environment
from modelship.service.serving import call_error


def test_haproxy_and_throughput_mode_by_default_with_logs_written_at_once() -> None:
    assert ray_environment({"host": "127.0.0.1", "port": 8000}, {}) == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
    }


def test_tls_keeps_serves_python_proxy() -> None:
    env = ray_environment({"ssl_certfile": "/certs/tls.crt", "ssl_keyfile": "/certs/tls.key"})
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_a_switch_already_set_is_left_alone() -> None:
    env = ray_environment(None, {"RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_private_haproxy_files_and_ports(tmp_path: Path) -> None:
    directory = Path("/tmp") / tmp_path.name[:16]
    env = private_haproxy(directory)
    assert directory.is_dir()
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == f"{directory}/admin.sock"
    assert int(env["RAY_SERVE_HAPROXY_STATS_PORT"]) > 0 < int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])
    directory.rmdir()
    # replicas' direct HTTP and gRPC ports of their own (another instance's differ)
    other = private_haproxy(directory)
    directory.rmdir()
    for kind in ("HTTP", "GRPC"):
        low, high = (int(env[f"RAY_SERVE_DIRECT_INGRESS_{e}_{kind}_PORT"]) for e in ("MIN", "MAX"))
        assert 20_000 <= low < high <= 29_000 and high - low == 20
    ranges = {env[k] for k in env if "DIRECT_INGRESS_MIN" in k}
    assert len(ranges | {other[k] for k in other if "DIRECT_INGRESS_MIN" in k}) >= 3


def test_a_free_port_is_not_one_the_kernel_hands_out_meanwhile() -> None:
    """free_port() was a port from a bind to port 0: one of the kernel's ephemeral ports,
    which it hands to any process binding port 0 (and, on Linux, connecting out). Between
    the pick and its server's bind (ray.init, serve.start: seconds), Ray's processes bind
    dozens that way: one could take it, and HAProxy, the Serve proxy or the metrics agent
    could not listen. Two picks could also be the same port. Neither can happen now."""
    kernel = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not kernel.exists():
        pytest.skip("no Linux ephemeral port range to check against")
    low, high = (int(port) for port in kernel.read_text().split())
    if low <= 32_767:
        pytest.skip(f"this kernel hands out ports from {low}, below the usual 32768")
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert [port for port in ports if low <= port <= high] == []


def test_a_haproxy_folder_too_long_for_its_sockets_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 27"):
        private_haproxy(Path("/tmp/a-folder-name-far-too-long-for-haproxy"))


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (DeploymentUnavailableError("Model-minilm"), 503, "model_not_ready"),  # was a 500
        (ReplicaUnavailableError("replica gone"), 503, "model_not_ready"),
        (NodeDiedError("node gone"), 503, "model_not_ready"),
        (ObjectLostError("abc", "owner", "call site"), 503, "model_not_ready"),
        (ActorDiedError(), 503, "model_not_ready"),
        (BackPressureError(num_queued_requests=9, max_queued_requests=8), 503, "overloaded"),
        (TimeoutError(), 503, "timeout"),
        (RayTaskError("predict", "traceback", Overloaded("busy")), 503, "overloaded"),
        (RayTaskError("predict", "traceback", KeyError("a bug")), 500, "internal_error"),
        (KeyError("a bug"), 500, "internal_error"),
    ],
)
def test_what_a_failed_call_between_deployments_answers(
    raised: BaseException, status: int, code: str
) -> None:
    error = call_error(raised)
    assert (error.status, error.code) == (status, code)
