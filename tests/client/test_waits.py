"""``wait_job`` and ``wait_export`` against fake servers (``httpx.MockTransport``): which
statuses end a wait, ``timeout_s`` as a deadline, and ``poll_s`` checked alike by both
clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelship.client import AsyncClient, Client, Gone
from modelship.client._protocol import Reply, Request
from tests.client.fakes import FakeClock, drive, error, export, fake_api, job


def test_an_expired_export_ends_the_wait(tmp_path: Path) -> None:
    """``expired`` is terminal, as ``failed`` is: the wait returns it; ``export`` then
    raises ``Gone`` from the download, noting the export's status."""
    polls: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        polls.append(request.method)
        if request.url.path.endswith("/download"):
            return error(410, "export_expired")
        if request.method == "POST":
            return httpx.Response(202, json=export("queued"))
        return httpx.Response(200, json=export("expired"))

    with Client("http://test", transport=httpx.MockTransport(server), poll_s=0.01) as ms:
        assert ms.wait_export(uuid.uuid4(), timeout_s=5).status == "expired"
        assert polls == ["GET"]
        with pytest.raises(Gone) as expired:
            ms.export(uuid.uuid4(), "json", tmp_path)
    assert any("expired" in note for note in expired.value.__notes__)
    assert list(tmp_path.iterdir()) == []


async def test_an_expired_export_ends_the_async_wait() -> None:
    server = httpx.MockTransport(lambda _: httpx.Response(200, json=export("expired")))
    async with AsyncClient("http://test", transport=server, poll_s=0.01) as ms:
        done = await asyncio.wait_for(ms.wait_export(uuid.uuid4()), 5)
    assert done.status == "expired"


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_timeout_s_is_a_deadline_for_a_server_that_is_down() -> None:
    """The retries of each poll stop at the deadline (they ran 15 s past ``timeout_s=1``
    and raised ``ConnectError``): TimeoutError, from the last request's error. Asked at 0,
    then after the first backoff (0.5 s); the next (1 s) would end past the deadline."""
    clock = FakeClock()
    asked: list[tuple[float, float | None]] = []

    def down(request: Request) -> Reply:
        asked.append((clock.now, request.deadline))
        return Reply(0, {}, error=httpx.ConnectError("connection refused"))

    api = fake_api(clock)
    for wait in (api.wait_job, api.wait_export):
        clock.now, asked[:] = 0.0, []
        with pytest.raises(TimeoutError, match="did not finish within 1s") as late:
            drive(wait(uuid.uuid4(), timeout_s=1), clock, down)
        assert asked == [(0.0, 1.0), (0.5, 1.0)]  # each request cut to the deadline
        assert clock.now == 0.5
        assert isinstance(late.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    "restarting",
    [
        Reply(500, {}, b"<html><body><h1>500 Internal Server Error</h1></body></html>"),
        Reply(0, {}, error=httpx.ConnectError("connection refused")),
        Reply(503, {"retry-after": "5"}, error(503, "model_not_ready").content),
    ],
    ids=["haproxy-500", "refused", "503"],
)
def test_a_wait_outlasts_a_restart_longer_than_a_request_s_retries(restarting: Reply) -> None:
    """The proxy answering 500 while no Ingress replica is up (or nothing answering, or a
    503) for 40 s, longer than a request's 5 retries (15.5 s): a wait with a deadline
    keeps asking until it, and returns the job once the server is back. It raised the
    proxy's 500 mid-wait (the chaos drill, under load)."""
    clock = FakeClock()
    asked: list[float] = []

    def server(request: Request) -> Reply:
        asked.append(clock.now)
        if clock.now < 40:
            return restarting
        return Reply(200, {}, json.dumps(job("succeeded")).encode())

    done = drive(fake_api(clock).wait_job(uuid.uuid4(), timeout_s=600), clock, server)
    assert done.status == "succeeded"
    assert 40 <= clock.now <= 48
    assert max(later - earlier for earlier, later in itertools.pairwise(asked)) <= 8


def test_a_wait_without_a_deadline_still_gives_up_after_the_retries() -> None:
    """No ``timeout_s``: the proxy's 500 is raised after the request's retries, as from a
    single request, not waited out for ever."""
    clock = FakeClock()

    def down(request: Request) -> Reply:
        return Reply(500, {}, b"<html>500</html>")

    with pytest.raises(Exception, match="500"):
        drive(fake_api(clock).wait_job(uuid.uuid4()), clock, down)
    assert clock.now == 0.5 + 1 + 2 + 4 + 8


def test_the_client_gives_up_on_a_server_that_is_down() -> None:
    """The client runs those operations: TimeoutError, from the last ``ConnectError``."""
    with (
        Client("http://test", transport=httpx.MockTransport(_unreachable)) as ms,
        pytest.raises(TimeoutError, match="did not finish within 1s") as late,
    ):
        ms.wait_job(uuid.uuid4(), timeout_s=1)
    assert isinstance(late.value.__cause__, httpx.ConnectError)
    assert "connection refused" in str(late.value)


def test_a_request_is_given_what_is_left_of_the_wait() -> None:
    """The client's 60 s timeout is cut to what is left of ``timeout_s``, for each of
    connect, read, write and pool."""
    given: list[dict[str, float]] = []

    def hangs(request: httpx.Request) -> httpx.Response:
        given.append(request.extensions["timeout"])
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        Client("http://test", timeout=60, transport=httpx.MockTransport(hangs)) as ms,
        pytest.raises(TimeoutError) as late,
    ):
        ms.wait_job(uuid.uuid4(), timeout_s=0.5)
    assert isinstance(late.value.__cause__, httpx.ReadTimeout)
    assert given and all(0 < seconds <= 0.5 for cut in given for seconds in cut.values())


@pytest.fixture
def silent() -> Iterator[str]:
    """A server that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"


def test_a_request_that_hangs_is_cut_at_the_deadline(silent: str) -> None:
    """On a real socket: httpx ends the read at the cut timeout, well before the
    client's own 60 s (what it is cut to is exact above)."""
    with Client(silent, timeout=60) as ms:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as late:
            ms.wait_job(uuid.uuid4(), timeout_s=0.5)
        assert time.monotonic() - started < 60
    assert isinstance(late.value.__cause__, httpx.ReadTimeout)


async def test_an_async_request_that_hangs_is_cut_at_the_deadline(silent: str) -> None:
    async with AsyncClient(silent, timeout=60) as ms:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as late:
            await ms.wait_export(uuid.uuid4(), timeout_s=0.5)
        assert time.monotonic() - started < 60
    assert isinstance(late.value.__cause__, httpx.ReadTimeout)


def test_the_last_poll_is_at_the_deadline() -> None:
    """``timeout_s`` below ``poll_s``: the wait sleeps what is left and asks once more
    (it raised at once, without waiting)."""
    clock = FakeClock()
    asked: list[float] = []

    def running(request: Request) -> Reply:
        asked.append(clock.now)
        return Reply(200, {}, json.dumps(job("running")).encode())

    with pytest.raises(TimeoutError, match=r"did not finish within 0\.3s"):
        drive(fake_api(clock, poll_s=5).wait_job(uuid.uuid4(), timeout_s=0.3), clock, running)
    assert asked == [0.0, 0.3] and clock.now == 0.3


def _running() -> tuple[httpx.MockTransport, list[float]]:
    asked: list[float] = []

    def server(request: httpx.Request) -> httpx.Response:
        asked.append(time.monotonic())
        return httpx.Response(200, json=job("running"))

    return httpx.MockTransport(server), asked


def test_the_client_waits_until_the_deadline() -> None:
    """The client sleeps the operation's waits: it does not give up before the deadline."""
    transport, _ = _running()
    with Client("http://test", transport=transport, poll_s=5) as ms:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            ms.wait_job(uuid.uuid4(), timeout_s=0.3)
        assert time.monotonic() - started >= 0.3  # (when it asks: exact above)


async def test_the_async_wait_keeps_the_same_deadline() -> None:
    down = httpx.MockTransport(_unreachable)
    async with AsyncClient("http://test", transport=down) as ms:
        with pytest.raises(TimeoutError, match="did not finish within 1s") as late:
            await ms.wait_export(uuid.uuid4(), timeout_s=1)
    assert isinstance(late.value.__cause__, httpx.ConnectError)
    transport, _ = _running()
    async with AsyncClient("http://test", transport=transport, poll_s=5) as ms:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await ms.wait_job(uuid.uuid4(), timeout_s=0.3)
        assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("poll_s", [0, -1, float("nan")])
def test_poll_s_must_be_positive_for_both_clients(poll_s: float) -> None:
    """``poll_s=-1`` raised only from the sync client's sleep; the async one, and both
    with 0, asked without pause (10,000 requests in half a second)."""
    with pytest.raises(ValueError, match="poll_s"):
        Client("http://test", poll_s=poll_s)
    with pytest.raises(ValueError, match="poll_s"):
        AsyncClient("http://test", poll_s=poll_s)


async def test_timeout_s_may_not_be_negative() -> None:
    transport, asked = _running()
    with (
        Client("http://test", transport=transport) as ms,
        pytest.raises(ValueError, match="timeout_s"),
    ):
        ms.wait_job(uuid.uuid4(), timeout_s=-1)
    async with AsyncClient("http://test", transport=transport) as ms:
        with pytest.raises(ValueError, match="timeout_s"):
            await ms.wait_export(uuid.uuid4(), timeout_s=-1)
    assert asked == []  # refused before asking
