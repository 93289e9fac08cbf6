"""Upload virus scanning against a real clamd (Debian's ``clamav-daemon``), started here
with a signature database this module writes: the EICAR test file's MD5 and size. Uploads
go over ASGI to the real PostgreSQL of this machine."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from modelship.core.config import LabelingAppArgs
from modelship.core.errors import PayloadTooLarge, ScannerUnavailable
from modelship.core.settings import Settings
from modelship.ops.preflight import run_checks
from modelship.ops.ray_env import free_port
from modelship.service.labeling import LocalLabeler
from storage.scan import Clamd
from storage.services import Services
from tests.conftest import EFFICIENTNET
from tests.unit.flow import api_client, assert_error, image_project, png, text_project

pytestmark = pytest.mark.asyncio(loop_scope="module")

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Eicar-Test-Signature"
STREAM_MAX = 200_000  # below job_settings' max_image_bytes, to see clamd's limit refused


class _Clamd:
    """A clamd of this test's own: a Unix socket and a TCP port, foreground, no freshclam."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        database = root / "db"
        database.mkdir(exist_ok=True)
        digest = hashlib.md5(EICAR).hexdigest()
        (database / "eicar.hdb").write_text(f"{digest}:{len(EICAR)}:{SIGNATURE}\n")
        self.socket = root / "clamd.ctl"
        self.port = free_port()
        self.config = root / "clamd.conf"
        self.config.write_text(
            f"LocalSocket {self.socket}\nTCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {database}\nTemporaryDirectory {root}\n"
            f"LogFile {root / 'clamd.log'}\nPidFile {root / 'clamd.pid'}\n"
            f"Foreground yes\nStreamMaxLength {STREAM_MAX}\n"
        )
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert CLAMD is not None
        self.process = subprocess.Popen(
            [CLAMD, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.config.parent / "clamd.log").read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


CLAMD = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Clamd]:
    if CLAMD is None:
        pytest.skip("clamd is not installed (Debian: apt-get install clamav-daemon)")
    daemon = _Clamd(tmp_path_factory.mktemp("clamd"))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def scan_settings(
    job_settings: Settings, clamd: _Clamd, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    objects = tmp_path_factory.mktemp("scanned-objects")
    return job_settings.model_copy(
        update={"clamd_url": clamd.url, "clamd_timeout_s": 10.0, "object_store_url": str(objects)}
    )


@pytest.fixture(scope="module")
async def scanning(
    local: LocalLabeler, scan_settings: Settings
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    services = Services.from_settings(scan_settings)
    async with api_client(local, services, scan_settings) as http:
        yield http, services
    await services.close()


def _objects(settings: Settings) -> list[Path]:
    assert settings.object_store_url is not None
    return [p for p in Path(settings.object_store_url).rglob("*") if p.is_file()]


async def _items(client: httpx.AsyncClient, project: dict[str, object]) -> list[object]:
    response = await client.get(f"/api/v1/projects/{project['id']}/items")
    assert response.status_code == 200, response.text
    items: list[object] = response.json()["items"]
    return items


def _noise(side: int) -> bytes:
    """A PNG about 3 * side**2 bytes long: noise does not compress."""
    buffer = io.BytesIO()
    pixels = random.Random(side).randbytes(3 * side * side)
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the client ---------------------------------------------------------------------


async def test_clamd_finds_eicar_and_passes_clean_bytes(clamd: _Clamd) -> None:
    for url in (clamd.url, f"tcp://127.0.0.1:{clamd.port}"):
        scanner = Clamd(url, timeout_s=10)
        await scanner.ping()
        assert await scanner.scan(EICAR) == f"{SIGNATURE}.UNOFFICIAL"
        assert await scanner.scan(b"") is None
        assert await scanner.scan(png(1) * 100) is None  # several chunks


async def test_clamd_refuses_a_stream_past_its_limit_however_far_past(clamd: _Clamd) -> None:
    # clamd replies and hangs up at StreamMaxLength; the client, still sending, must read
    # that reply, not report the hang-up as an outage
    for url in (clamd.url, f"tcp://127.0.0.1:{clamd.port}"):
        scanner = Clamd(url, timeout_s=10)
        for size in (STREAM_MAX + 1, 300_000, 4_000_000):
            for _ in range(3):
                with pytest.raises(PayloadTooLarge) as refused:
                    await scanner.scan(b"\1" * size)
                assert refused.value.code == "too_large_to_scan"


async def test_a_missing_clamd_is_unavailable(tmp_path: Path) -> None:
    for url in (f"unix://{tmp_path}/none.ctl", f"tcp://127.0.0.1:{free_port()}"):
        with pytest.raises(ScannerUnavailable):
            await Clamd(url, timeout_s=5).scan(b"hello")


async def test_a_clamd_that_does_not_answer_times_out(tmp_path: Path) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    server = await asyncio.start_unix_server(stall, path=str(tmp_path / "stall.ctl"))
    try:
        with pytest.raises(ScannerUnavailable):
            await Clamd(f"unix://{tmp_path}/stall.ctl", timeout_s=0.3).scan(EICAR)
    finally:
        server.close()
        await server.wait_closed()


def test_clamd_url_is_checked() -> None:
    assert Settings().clamd_url is None  # off by default
    for bad in ("http://clamd:3310", "tcp://clamd", "unix://", "/run/clamd.ctl"):
        with pytest.raises(ValidationError):
            Settings(clamd_url=bad)
    assert Settings(clamd_url="tcp://clamd:3310").clamd_url == "tcp://clamd:3310"


# --- uploads ------------------------------------------------------------------------


async def test_an_infected_image_upload_stores_nothing(
    scanning: tuple[httpx.AsyncClient, Services], scan_settings: Settings
) -> None:
    client, _ = scanning
    project = await image_project(client)
    before = _objects(scan_settings)
    files = [("file", ("ok.png", png(7), "image/png")), ("file", ("eicar.png", EICAR, "image/png"))]
    response = await client.post(f"/api/v1/projects/{project['id']}/items", files=files)
    assert_error(response, 422, "infected")
    message = response.json()["error"]["message"]
    assert "file 1 (eicar.png)" in message and SIGNATURE in message
    assert await _items(client, project) == []
    assert _objects(scan_settings) == before

    clean = await client.post(f"/api/v1/projects/{project['id']}/items", files=files[:1])
    assert clean.status_code == 201, clean.text
    assert len(await _items(client, project)) == 1
    assert len(_objects(scan_settings)) == len(before) + 1


async def test_infected_texts_are_refused_from_files_and_json(
    scanning: tuple[httpx.AsyncClient, Services],
) -> None:
    client, _ = scanning
    project = await text_project(client)
    url = f"/api/v1/projects/{project['id']}/items"
    files = [
        ("file", ("notes.txt", b"the team won the match\nbake the bread\n", "text/plain")),
        ("file", ("eicar.txt", EICAR, "text/plain")),
    ]
    response = await client.post(url, files=files)
    assert_error(response, 422, "infected")
    assert response.json()["error"]["message"].startswith("text 2 (eicar.txt): ")
    assert_error(await client.post(url, json={"texts": [EICAR.decode()]}), 422, "infected")
    assert await _items(client, project) == []

    texts = b"the team won the match\nstir the sauce slowly\n"
    clean = await client.post(url, files=[("file", ("notes.txt", texts, "text/plain"))])
    assert clean.status_code == 201, clean.text
    assert len(clean.json()["items"]) == 2


async def test_past_clamds_stream_limit_is_refused_not_clean(
    scanning: tuple[httpx.AsyncClient, Services], scan_settings: Settings
) -> None:
    client, _ = scanning
    project = await image_project(client)
    big = _noise(300)
    assert STREAM_MAX < len(big) <= scan_settings.max_image_bytes
    files = [("file", ("big.png", big, "image/png"))]
    response = await client.post(f"/api/v1/projects/{project['id']}/items", files=files)
    assert_error(response, 413, "too_large_to_scan")
    assert "file 0 (big.png)" in response.json()["error"]["message"]
    assert await _items(client, project) == []


async def test_uploads_fail_closed_while_clamd_is_down(
    local: LocalLabeler, job_settings: Settings, tmp_path: Path
) -> None:
    daemon = _Clamd(tmp_path / "clamd")
    daemon.start()
    settings = job_settings.model_copy(update={"clamd_url": daemon.url})
    services = Services.from_settings(settings)
    try:
        async with api_client(local, services, settings) as client:
            project = await image_project(client)
            url = f"/api/v1/projects/{project['id']}/items"
            ok = await client.post(url, files=[("file", ("a.png", png(11), "image/png"))])
            assert ok.status_code == 201, ok.text
            daemon.stop()
            down = await client.post(url, files=[("file", ("b.png", png(12), "image/png"))])
            assert_error(down, 503, "scanner_unavailable")
            assert down.headers["retry-after"] == "5"
            assert len(await _items(client, project)) == 1
    finally:
        daemon.stop()
        await services.close()


# --- preflight ----------------------------------------------------------------------


async def test_preflight_checks_clamd(scan_settings: Settings, tmp_path: Path) -> None:
    checks = await run_checks(LabelingAppArgs(models=[EFFICIENTNET], settings=scan_settings))
    clamd = {c.name: c for c in checks}["clamd"]
    assert clamd.ok and "PING" in clamd.detail, clamd
    dead = scan_settings.model_copy(update={"clamd_url": f"unix://{tmp_path}/none.ctl"})
    checks = await run_checks(LabelingAppArgs(models=[EFFICIENTNET], settings=dead))
    assert not {c.name: c for c in checks}["clamd"].ok
