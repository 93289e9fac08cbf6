"""Hosts on one Linux machine: network namespaces on a bridge, each with its own address.

``Network`` makes a bridge on a free ``10.77.N.0/24``; each ``Host`` is a namespace with a
veth on it and a default route through the bridge's address, which is the machine's own:
services outside the cluster listen there (a ``Relay`` forwards one from loopback). Needs
root and iproute2. ``modelship.ops.cluster.emulate`` runs Ray pods on these hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Host:
    """One network namespace with an address on the bridge: a pod's own network."""

    netns: str
    ip: str
    veth: str  # its end on the bridge

    def popen(
        self, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in this namespace with exactly ``env``, output to ``log``."""
        with log.open("ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(
        self, argv: list[str], env: Mapping[str, str], timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` here to completion (what ``kubectl exec`` does in a pod)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill(self, timeout_s: float = 15) -> None:
        """SIGKILL every process in this namespace (and only those), until none is left."""
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.netns}: processes left after SIGKILL: {pids}")
            time.sleep(0.1)

    def settle(self, timeout_s: float = 10) -> None:
        """After ``kill``: wait (at most ``timeout_s``) until every TCP socket here is
        closed, or closed on our side with the peer told (TIME-WAIT, FIN-WAIT-2). A killed
        process's connections close with a FIN or RST, possibly only once its last thread
        has exited; if the namespace went first, its peers would never learn, as when a
        node is lost with its network (PostgreSQL keeps such a session's transaction, and
        its row locks, open for hours)."""
        open_ = ["ss", "-Htan", "exclude", "time-wait", "exclude", "fin-wait-2"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["ip", "netns", "exec", self.netns, *open_], capture_output=True, text=True
            )
            if done.returncode != 0 or not done.stdout.strip():
                return
            time.sleep(0.1)


class Network:
    """A bridge with one /24 (``10.77.N.0/24``, ``N`` free on this machine); hosts are
    namespaces with a veth on it. The gateway address is the machine's own: services
    outside the cluster (Redis, a relay to PostgreSQL) listen there."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.bridge = f"ms-br{index}"
        self.gateway = f"10.77.{index}.1"
        self.hosts: list[Host] = []
        self._next = 2

    @classmethod
    def create(cls) -> Network:
        """A new bridge on a subnet no route of this machine uses yet."""
        routes = _ip("-4", "route", "show").stdout
        candidates = [i for i in range(256) if f"10.77.{i}." not in routes]
        random.shuffle(candidates)
        for index in candidates[:20]:
            network = cls(index)
            made = _ip("link", "add", network.bridge, "type", "bridge", check=False)
            if made.returncode == 0:  # else another run took this name meanwhile
                _ip("addr", "add", f"{network.gateway}/24", "dev", network.bridge)
                _ip("link", "set", network.bridge, "up")
                return network
        raise RuntimeError("no free 10.77.N.0/24 subnet for a bridge")

    def add_host(self, name: str) -> Host:
        """A namespace ``ms<N>-<name>`` with the next address and a default route."""
        number = self._next
        self._next += 1
        veth = f"ms{self.index}v{number}"
        host = Host(f"ms{self.index}-{name}", f"10.77.{self.index}.{number}", veth)
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "route", "add", "default", "via", self.gateway)
        return host

    def remove_host(self, host: Host) -> None:
        """Kill what runs in ``host``, let its connections close, then delete its veth and
        namespace. The kernel frees the namespace once its last sockets are gone (those to
        a vanished peer linger for minutes); with its veth gone, nothing of it shows."""
        host.kill()
        host.settle()
        _ip("link", "del", host.veth, check=False)
        _ip("netns", "del", host.netns, check=False)
        if host in self.hosts:
            self.hosts.remove(host)

    def close(self) -> None:
        for host in list(self.hosts):
            self.remove_host(host)
        _ip("link", "del", self.bridge, check=False)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


class Relay:
    """Forwards ``listen`` (on the bridge) to ``target`` (on loopback) in its own process:
    services here listen on 127.0.0.1, which no namespace reaches."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        argv = [sys.executable, "-m", __name__, "relay", *map(str, (*listen, *target))]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for(lambda: _connects(listen), 30, f"relay on {listen}")

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


def _connects(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
        return True
    except OSError:
        return False


async def _relay(listen_host: str, listen_port: int, host: str, port: int) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            pipe(reader, target_writer), pipe(target_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(connect, listen_host, listen_port)
    async with server:
        await server.serve_forever()


def wait_for(ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``ready()`` every half second until it is true.

    Raises:
        TimeoutError: not after ``timeout_s``, naming ``what``.
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s}s")
        time.sleep(0.5)


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    listen_host, listen_port, target_host, target_port = sys.argv[2:6]
    asyncio.run(_relay(listen_host, int(listen_port), target_host, int(target_port)))
