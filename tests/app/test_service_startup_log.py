"""What ``trafficcast serve`` writes while it starts: one line on the schema, not Alembic's
chatter; and, while its database is unreachable, one line naming it (without the password) and
the cause, then retries, with no traceback. Real processes, real databases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import free_port
from trafficcast.app.db import migrate

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_CHATTER = ("setup plugin", "Context impl", "Will assume", "Running upgrade")


class Serve:
    """``trafficcast serve`` in a subprocess on a free port, its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.err_path = tmp_path / f"serve-{self.port}.err"
        self.out_path = tmp_path / f"serve-{self.port}.out"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICCAST_")}
        argv = [sys.executable, "-m", "trafficcast", "serve", "--port", str(self.port)]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*argv, *args], env={**clean, **env}, cwd=ROOT, stdout=out, stderr=err
            )

    def stderr(self) -> str:
        return self.err_path.read_text()

    def output(self) -> str:
        return self.out_path.read_text() + self.stderr()

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited ({self.proc.returncode}): {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} in {timeout_s} s: {self.output()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _accepts(host_port: str) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex((host, int(port))) == 0


def quiet_env() -> dict[str, str]:
    return {"TRAFFICCAST_SEED_OBSERVATIONS": "none", "TRAFFICCAST_TORCH_THREADS": "1"}


def lines_with(text: str, part: str) -> list[str]:
    return [line for line in text.splitlines() if part in line]


def test_start_up_logs_one_schema_line_and_no_alembic_chatter(
    service_run_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "observations.sqlite3"
    env = {**quiet_env(), "TRAFFICCAST_OBSERVATIONS_DB": str(db)}
    expected = [
        f"schema upgraded none -> {migrate.head()}",  # a new file: migrated
        f"schema at {migrate.head()}",  # the same file again: nothing to do
    ]
    for line in expected:
        serve = Serve(tmp_path, "--run", str(service_run_dir), env=env)
        try:
            serve.wait_for(serve.ready, 120, "readiness")
        finally:
            serve.stop()
        log = serve.stderr()
        assert [n for n in ALEMBIC_CHATTER if n in log] == [], log
        assert len(lines_with(log, "schema")) == 1, log
        (schema,) = lines_with(log, "schema")
        assert schema.endswith(f"database sqlite+pysqlite:///{db}: {line}"), log


def test_unreachable_database_is_one_line_then_retried_without_traceback(
    service_run_dir: Path, postgres, postgres_url: str, tmp_path: Path
) -> None:
    secret = "pw-startup-7c1e"
    scheme, rest = postgres_url.split("://", 1)
    user, where = rest.split("@", 1)
    # The test server trusts local connections: any password connects.
    url = f"{scheme}://{user}:{secret}@{where}"
    postgres.stop()
    # The server must be gone before serve starts, or there is nothing to wait for.
    assert not postgres.running() and not _accepts(where.split("/")[0]), "postgres still up"
    try:
        serve = Serve(
            tmp_path, "--run", str(service_run_dir), "--database-url", url, env=quiet_env()
        )
        try:
            serve.wait_for(lambda: "unreachable" in serve.stderr(), 120, "unreachable line")
            time.sleep(5)  # a few more attempts: still one line
            assert serve.proc.poll() is None, serve.output()
            postgres.start()
            serve.wait_for(serve.ready, 120, "readiness once the database is back")
        finally:
            serve.stop()
    finally:
        if not postgres.running():
            postgres.start()
    log = serve.stderr()
    assert "Traceback" not in log
    assert secret not in serve.output()
    (line,) = lines_with(log, "unreachable")
    hidden = f"{scheme}://{user}:***@{where}".replace("postgresql://", "postgresql+psycopg://")
    assert line.startswith(f"WARNING:     database {hidden} unreachable (connection failed: ")
    assert line.endswith("Connection refused); retrying for up to 60 s"), line
    assert len(lines_with(log, "schema")) == 1, log


@pytest.mark.slow
def test_a_database_that_stays_unreachable_ends_start_up_in_one_error_line(
    service_run_dir: Path, tmp_path: Path
) -> None:
    url = f"postgresql://u:pw-never-shown@127.0.0.1:{free_port()}/x"
    serve = Serve(tmp_path, "--run", str(service_run_dir), "--database-url", url, env=quiet_env())
    try:
        code = serve.proc.wait(timeout=120)
    finally:
        serve.stop()
    log = serve.stderr()
    assert code == 3
    assert "Traceback" not in log and "pw-never-shown" not in serve.output()
    assert len(lines_with(log, "unreachable")) == 2, log  # the wait's line, then giving up
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: database postgresql+psycopg://u:***@127.0.0.1:")
    assert "unreachable for 60 s: connection failed:" in last
