"""Virus scanning of uploads by ClamAV's daemon (clamd), over a Unix or TCP socket.

The protocol is clamd's own (clamd(8)), a few lines, so no client library: ``zINSTREAM\\0``,
the data in chunks each preceded by its length (4 bytes, big-endian), a zero length to end;
the reply is NUL-terminated: ``stream: OK``, ``stream: <signature> FOUND``, or a message
ending in ``ERROR``. Anything else than OK or FOUND fails the scan: a file clamd did not
read to its end is not clean. Past clamd's ``StreamMaxLength`` clamd says ``INSTREAM size
limit exceeded`` and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from modelship.core.errors import (
    ConfigurationError,
    Infected,
    PayloadTooLarge,
    ScannerUnavailable,
)
from modelship.core.settings import Settings

logger = logging.getLogger("modelship.storage")

_CHUNK = 64 * 1024
_MAX_REPLY = 64 * 1024


class Scanner(Protocol):
    """What uploads are scanned with."""

    async def scan(self, data: bytes) -> str | None:
        """The name of the signature found in ``data``, or None when it is clean.

        Raises:
            ScannerUnavailable: the scanner did not answer, or answered with an error.
            PayloadTooLarge: ``data`` is larger than the scanner reads.
        """
        ...


async def scan_all(
    scanner: Scanner, streams: Sequence[tuple[str, bytes]], concurrency: int = 4
) -> None:
    """Scan named streams, a few at a time; the first finding or failure stops the rest.

    Raises:
        Infected: a signature was found (the message names the stream and the signature).
        PayloadTooLarge: a stream is larger than the scanner reads (named too).
        ScannerUnavailable: the scanner did not answer, or failed.
    """
    limit = asyncio.Semaphore(concurrency)

    async def scan(name: str, data: bytes) -> None:
        async with limit:
            try:
                signature = await scanner.scan(data)
            except PayloadTooLarge as exc:
                raise PayloadTooLarge(f"{name}: {exc.message}", exc.code) from None
        if signature is not None:
            raise Infected(f"{name}: the virus scanner found {signature}")

    try:
        async with asyncio.TaskGroup() as group:
            for name, data in streams:
                group.create_task(scan(name, data))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None


class Clamd:
    """A clamd, each command on a connection of its own.

    Args:
        url: ``unix:///path/clamd.ctl`` or ``tcp://host:port``.
        timeout_s: for one whole command: connecting, sending and the reply.
    """

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme == "unix" and parts.path:
            self._path: str | None = parts.path
        elif parts.scheme == "tcp" and parts.hostname and parts.port:
            self._path = None
        else:
            raise ConfigurationError(f"clamd URL {url!r}: use unix:///path or tcp://host:port")
        self._host, self._port = parts.hostname, parts.port
        self.url = url
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Clamd | None:
        """The configured clamd, or None when uploads are not scanned."""
        if settings.clamd_url is None:
            return None
        return cls(settings.clamd_url, settings.clamd_timeout_s)

    async def scan(self, data: bytes) -> str | None:
        reply = await self._command(b"INSTREAM", data)
        if reply == "stream: OK":
            return None
        if reply.startswith("stream: ") and reply.endswith(" FOUND"):
            return reply.removeprefix("stream: ").removesuffix(" FOUND")
        if "size limit exceeded" in reply:
            raise PayloadTooLarge(
                f"{len(data)} bytes is more than the virus scanner reads (clamd's StreamMaxLength)",
                "too_large_to_scan",
            )
        logger.warning("clamd at %s could not scan %d bytes: %s", self.url, len(data), reply)
        raise ScannerUnavailable("the virus scanner failed; retry later")

    async def ping(self) -> None:
        """Raises ScannerUnavailable unless clamd answers PONG."""
        reply = await self._command(b"PING")
        if reply != "PONG":
            raise ScannerUnavailable(f"clamd at {self.url} answered {reply!r} to PING")

    async def _command(self, command: bytes, data: bytes | None = None) -> str:
        # Plain sockets, not streams: a stream whose write hit clamd's hang-up raises that
        # error on every later read, and clamd's reply (why it hung up) would be lost.
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                with await self._connect(loop) as sock:
                    await loop.sock_sendall(sock, b"z" + command + b"\0")
                    if data is not None:
                        await _send(loop, sock, data)
                    reply = await _reply(loop, sock)
        except (OSError, TimeoutError) as exc:
            logger.warning("clamd at %s: %r", self.url, exc)
            raise ScannerUnavailable("the virus scanner is unavailable; retry later") from exc
        return reply.decode(errors="replace").strip()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        address: Any
        if self._path is not None:
            family, address = socket.AF_UNIX, self._path
        else:
            found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            family, _, _, _, address = found[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock


async def _send(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    try:
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            await loop.sock_sendall(sock, len(chunk).to_bytes(4, "big") + chunk)
        await loop.sock_sendall(sock, b"\0\0\0\0")
    except (BrokenPipeError, ConnectionResetError):
        pass  # clamd hung up past its StreamMaxLength; its reply, already sent, says so


async def _reply(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """clamd's reply, up to its NUL."""
    reply = b""
    while b"\0" not in reply:
        if len(reply) > _MAX_REPLY:
            raise ConnectionError(f"clamd's reply is longer than {_MAX_REPLY} bytes")
        part = await loop.sock_recv(sock, 4096)
        if not part:
            raise ConnectionError("clamd closed the connection without a reply")
        reply += part
    return reply.split(b"\0", 1)[0]
