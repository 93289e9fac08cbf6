"""The config's HTTP edge on a second local cluster: TLS from ``ssl_certfile`` /
``ssl_keyfile`` (a self-signed certificate) and ``request_timeout_s``.

``serve run`` starts its own Ray cluster here (``--address local``): HTTP options are fixed
when Serve starts, so the session cluster cannot be given these.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelship.ops.ray_env import free_port, private_haproxy, ray_environment
from storage.embedded import stop_embedded
from tests.integration.conftest import text_only_config

TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 4.0  # ours, past Serve's: it holds when a client lifts Serve's


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def _edge_config(port: int, certfile: Path, keyfile: Path, data_dir: Path) -> dict[str, Any]:
    """The text-only config on TLS, with a short request timeout."""
    settings = {"data_dir": str(data_dir), "body_timeout_s": BODY_TIMEOUT_S}
    config = text_only_config(port, settings)
    config["http_options"].update(
        request_timeout_s=TIMEOUT_S, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)
    )
    return config


# Proxies and ingress replicas stay reachable 30 s once told to stop, for load balancers
# to deregister them: this module's teardown would wait that out.
_QUICK_STOP = {
    "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    directory = tmp_path_factory.mktemp("edge")
    certfile, keyfile = _self_signed(directory)
    port = free_port()
    config = directory / "serve_config.yaml"
    settings = _edge_config(port, certfile, keyfile, directory / "data")
    config.write_text(yaml.safe_dump(settings))
    # As `modelship serve` starts it: TLS keeps Serve's Python proxy (HAProxy has no TLS).
    mode = ray_environment(settings["http_options"], os.environ)
    assert mode["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Its replicas' ports of its own: the session's cluster runs beside it.
    own = private_haproxy(Path(tempfile.mkdtemp(prefix="h", dir="/tmp")))
    serve_bin = Path(sys.executable).with_name("serve")
    log = (directory / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(serve_bin), "run", "--address", "local", str(config)],
        cwd=Path(__file__).resolve().parents[2],
        env={
            **os.environ,
            **mode,
            **own,
            **_QUICK_STOP,
            "HF_HUB_OFFLINE": "1",
            "RAY_TMPDIR": ray_tmp,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    trusted = ssl.create_default_context(cafile=str(certfile))
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (directory / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the TLS instance did not become ready"
            try:
                if httpx.get(f"{url}/health/ready", verify=trusted, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url, trusted
    finally:
        os.killpg(process.pid, signal.SIGINT)  # serve run shuts Serve and its cluster down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        stop_embedded(directory / "data" / "services")


def test_https_with_the_configured_certificate(edge: tuple[str, ssl.SSLContext]) -> None:
    url, trusted = edge
    with httpx.Client(base_url=url, verify=trusted, timeout=60) as client:
        labeled = client.post("/api/v1/classify/text", json={"texts": ["a football match"]})
        assert labeled.status_code == 200, labeled.text
        assert labeled.json()["results"][0]["labels"]
        assert client.get("/health/live").headers["strict-transport-security"]
    with pytest.raises(httpx.HTTPError):  # a client that cannot verify it is refused
        httpx.get(f"{url}/health/live", timeout=10)
    plain = url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):  # and nothing is served in the clear
        httpx.get(f"{plain}/health/live", timeout=10)


def _trickle(seconds: float) -> Iterator[bytes]:
    """A JSON body sent a few bytes every half second for ``seconds`` (slowloris)."""
    yield b'{"texts": ["'
    for _ in range(int(seconds * 2)):
        time.sleep(0.5)
        yield b"slow "
    yield b'"]}'


def test_a_request_past_request_timeout_s_is_cut_off(edge: tuple[str, ssl.SSLContext]) -> None:
    """A client trickling its body (slowloris) holds nothing past the timeout: 408."""
    url, trusted = edge

    with httpx.Client(base_url=url, verify=trusted, timeout=30) as client:
        response = client.post(
            "/api/v1/classify/text",
            content=_trickle(TIMEOUT_S * 2),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 408, response.text
        assert "timed out" in response.text
        assert response.headers["x-request-id"] in response.text
        # and the instance still serves
        ok = client.post("/api/v1/classify/text", json={"texts": ["after the timeout"]})
        assert ok.status_code == 200


def test_a_client_cannot_lift_the_timeout_for_a_trickling_body(
    edge: tuple[str, ssl.SSLContext],
) -> None:
    """``x-request-timeout-seconds: 0`` turns Serve's timeout off; the body timeout holds."""
    url, trusted = edge

    with httpx.Client(base_url=url, verify=trusted, timeout=30) as client:
        response = client.post(
            "/api/v1/classify/text",
            content=_trickle(BODY_TIMEOUT_S * 2),
            headers={"content-type": "application/json", "x-request-timeout-seconds": "0"},
        )
        assert response.status_code == 408, response.text  # ours, in our error shape
        assert response.json()["error"]["code"] == "body_timeout"
