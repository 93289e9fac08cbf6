"""The environment Ray starts with: Serve's fast data path by default.

Ray Serve reads these switches when its processes start, so they are set before Ray
starts (``modelship serve`` does it; on KubeRay they go in the pods' ``env``). A value
already in the environment wins, so any switch can be turned back off. Why each is on,
with the figures: docs/benchmark.md.

- ``RAY_SERVE_THROUGHPUT_OPTIMIZED``: calls between deployments over gRPC, user code and
  the router on the replica's own event loop, the Ingress serving HTTP itself.
- ``RAY_SERVE_ENABLE_HA_PROXY``: HAProxy in front instead of the Python proxy. HAProxy
  here does not terminate TLS, so a config with ``ssl_certfile`` keeps the Python proxy.
- ``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1``: throughput mode would hold 1,000 log
  records before writing any; an operator reading a quiet service would see nothing.
- ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``: a replica takes gRPC messages of at most
  4 MiB by default, and one shared call carries up to 16 requests' items.
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


def ray_environment(
    http_options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables to add to the environment Ray starts with (those not already set).

    Set them in a driver after importing Ray Serve if that driver calls handles from
    synchronous code: throughput mode binds a handle's router to the running event loop.
    """
    tls = bool((http_options or {}).get("ssl_certfile"))
    wanted = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "0" if tls else "1",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(_GRPC_MAX_MESSAGE_BYTES),
    }
    present = environ if environ is not None else {}
    return {name: value for name, value in wanted.items() if name not in present}


_MAX_HAPROXY_DIR = 97 - len("/metrics.sock") - 57


def private_haproxy(directory: Path) -> dict[str, str]:
    """Variables that give HAProxy its own files under ``directory`` and its own free ports
    (stats, metrics, the fallback proxy), for a second Serve instance on a machine that may
    already run one: by default every instance uses ``/tmp/haproxy-serve`` and ports 8404
    and 9101, and HAProxy's backup server is the Python proxy on 127.0.0.1:8500, so while
    an instance's Ingress is down (starting, restarting) its HAProxy would hand requests
    to the first instance's proxy and app.

    HAProxy refuses socket paths over 97 characters, and Ray adds a 56-character folder,
    so ``directory`` must be short (at most 27 characters).
    """
    if len(str(directory)) > _MAX_HAPROXY_DIR:
        raise ValueError(f"{directory}: HAProxy's folder needs at most {_MAX_HAPROXY_DIR} chars")
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        **_replica_ports(),
    }


_REPLICA_PORTS = 20


def _replica_ports() -> dict[str, str]:
    """Port ranges of its own for the replicas' direct HTTP and gRPC servers. Every Serve
    instance starts at 30000 and 40000 and binds with SO_REUSEPORT, so a second instance
    on the machine would share the first one's ports, and the kernel would hand each
    instance's requests to the other's replicas. A range is taken only if nothing listens
    on any of its ports (a bind without SO_REUSEPORT fails where another instance
    listens)."""
    ranges = {}
    for kind in ("HTTP", "GRPC"):
        base = _free_range(_REPLICA_PORTS)
        ranges[f"RAY_SERVE_DIRECT_INGRESS_MIN_{kind}_PORT"] = str(base)
        ranges[f"RAY_SERVE_DIRECT_INGRESS_MAX_{kind}_PORT"] = str(base + _REPLICA_PORTS)
    return ranges


def _free_range(count: int) -> int:
    rng = random.SystemRandom()
    for _ in range(100):
        base = rng.randrange(20_000, 29_000 - count, count)
        try:
            with contextlib.ExitStack() as bound:
                for port in range(base, base + count):
                    sock = bound.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free range of replica ports between 20000 and 29000")


# Below the kernel's ephemeral ports (Linux 32768+, macOS 49152+) and above the replicas'
# ranges (_free_range). A port from bind(("127.0.0.1", 0)) is an ephemeral one: until its
# server binds it, any process binding port 0 (Ray's start dozens) could be handed it too.
_PORTS = range(29_000, 32_768)
_handed: collections.deque[int] = collections.deque(maxlen=256)


def free_port() -> int:
    """A TCP port nothing is bound to now, for a server started later to bind: not one the
    kernel hands a process binding port 0 or connecting out meanwhile, nor one this process
    handed out lately."""
    for port in random.SystemRandom().sample(_PORTS, 64):
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))  # every address: a server on any of them holds it
            except OSError:
                continue
        _handed.append(port)
        return port
    raise RuntimeError(f"no free port between {_PORTS.start} and {_PORTS.stop - 1}")
