"""Replicas on PostgreSQL, end to end: real uvicorn processes sharing one real PostgreSQL database
and one model registry.

Any replica answers, and answers the same: a reading posted to one is in the next forecast of
the other; one batch sent to both is one row per reading; a promoted version reaches both. A
replica whose database stops keeps serving what it can without it (readiness and writes say 503,
forecasts come from its cache) and becomes ready again by itself when the database returns.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from tests.app.conftest import LiveServer
from trafficcast.app.cli import main
from trafficcast.data import SpeedData, read_speeds
from trafficcast.models.checkpoint import load_checkpoint, save_checkpoint

API_KEY = "replica-key"
WRITE = {"X-API-Key": API_KEY}


def readings(speeds: SpeedData, start: int, stop: int) -> dict:
    """The body of ``POST /v1/observations`` with steps ``start .. stop - 1`` of ``speeds``
    (missing readings as null)."""
    rows = slice(start, stop)
    values = np.where(speeds.mask[rows], speeds.values[rows], np.nan).astype(float)
    return {
        "timestamps": [t.isoformat() for t in speeds.index[rows]],
        "sensors": speeds.sensor_ids,
        "speeds": [[None if np.isnan(v) else v for v in row] for row in values.tolist()],
    }


def window_body(posted: dict, seq_len: int) -> dict:
    """``POST /v1/forecast``'s body for the last ``seq_len`` steps of posted readings."""
    return {k: v[-seq_len:] if k != "sensors" else v for k, v in posted.items()}


def stored_forecast(url: str) -> tuple[dict, str]:
    """``GET /v1/forecast`` of one replica: the body and whether it came from the cache."""
    r = httpx.get(f"{url}/v1/forecast", timeout=30)
    assert r.status_code == 200, r.text
    return r.json(), r.headers["X-Forecast-Cache"]


def same_answer(a: dict, b: dict) -> bool:
    """Two stored forecasts agree exactly (the ``cached`` flag aside)."""
    keys = ("model_version", "sensors", "timestamps", "forecast", "last_observation", "coverage")
    return all(a[k] == b[k] for k in keys)


def registry_version(url: str) -> str:
    return httpx.get(f"{url}/v1/model").json()["registry"]["version"]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


def start_servers(envs: list[dict[str, str]], tmp_path: Path) -> list[LiveServer]:
    """Start one server per environment together (their start-ups overlap), wait for all."""
    servers = [LiveServer(env, tmp_path / f"server-{k}.log") for k, env in enumerate(envs)]
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def replica_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "TRAFFICCAST_DATABASE_URL": database_url,
        "TRAFFICCAST_SEED_OBSERVATIONS": "none",
        "TRAFFICCAST_API_KEYS": API_KEY,
        "TRAFFICCAST_TORCH_THREADS": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def second_run(tiny_run, tmp_path_factory) -> Path:
    """Another model of the tiny run's sensors: its weights scaled by 0.9 (no training)."""
    run = tmp_path_factory.mktemp("second-run") / "run"
    shutil.copytree(tiny_run["run"], run)
    payload = load_checkpoint(run / "model.pt")
    payload["state_dict"] = {
        k: v * 0.9 if v.is_floating_point() and "support" not in k else v
        for k, v in payload["state_dict"].items()
    }
    save_checkpoint(run / "model.pt", payload)
    return run


@pytest.fixture
def registry(tiny_run, second_run, tmp_path) -> Path:
    """A registry with two versions of the tiny run's sensors: v0001 current, v0002 not yet."""
    root = tmp_path / "registry"
    imp = ["registry", "import", "--registry", str(root), "--distances", str(tiny_run["distances"])]
    assert main([*imp, str(tiny_run["run"])]) == 0
    assert main([*imp, str(second_run)]) == 0
    return root


@pytest.fixture
def replicas(registry, postgres_url, tmp_path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two replicas serving the registry (checked every 0.5 s), sharing one new database."""
    env = replica_env(
        postgres_url, TRAFFICCAST_REGISTRY=str(registry), TRAFFICCAST_REGISTRY_POLL_S="0.5"
    )
    a, b = start_servers([env, env], tmp_path)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
    for server in (a, b):
        assert "unexpected error" not in server.log_path.read_text()


@pytest.fixture
def speeds(tiny_run) -> SpeedData:
    return read_speeds(tiny_run["data"])


def test_a_reading_posted_to_one_replica_is_in_the_next_forecast_of_the_other(
    replicas, speeds
) -> None:
    a, b = replicas
    seq_len = httpx.get(f"{a.url}/v1/model").json()["seq_len"]
    assert httpx.get(f"{b.url}/v1/forecast").status_code == 409  # nothing stored yet

    end = 100
    posted = readings(speeds, end - seq_len, end)
    r = httpx.post(f"{a.url}/v1/observations", json=posted, headers=WRITE)
    assert r.status_code == 200 and r.json()["written"] == seq_len * speeds.num_sensors
    previous = None
    for writer, reader in ((a, b), (a, b), (b, a)):  # the second round: over a cached forecast
        if previous is not None:
            step = readings(speeds, end, end + 1)
            r = httpx.post(f"{writer.url}/v1/observations", json=step, headers=WRITE)
            assert r.status_code == 200, r.text
            posted = {k: v + step[k] if k != "sensors" else v for k, v in posted.items()}
            end += 1
        theirs, cache = stored_forecast(reader.url)
        assert cache == "miss"  # the other replica's write made the reader's forecast stale
        assert theirs["last_observation"] == speeds.index[end - 1].isoformat()
        if previous is not None:
            assert theirs["forecast"] != previous["forecast"]
        # The writer, on the same data and model, gives exactly the same forecast...
        mine, _ = stored_forecast(writer.url)
        assert same_answer(mine, theirs)
        # ...which is the model's forecast of exactly the readings posted.
        sent = httpx.post(f"{reader.url}/v1/forecast", json=window_body(posted, seq_len))
        assert sent.status_code == 200, sent.text
        assert sent.json()["forecast"] == theirs["forecast"]
        assert sent.json()["timestamps"] == theirs["timestamps"]
        previous = theirs
    again, cache = stored_forecast(a.url)
    assert cache == "hit" and same_answer(again, previous)


def test_one_batch_sent_to_both_replicas_is_one_row_per_reading(
    replicas, speeds, postgres_url
) -> None:
    a, b = replicas
    batch = readings(speeds, 200, 236)
    expected = {
        (sid, t): v
        for t, row in zip(batch["timestamps"], batch["speeds"], strict=True)
        for sid, v in zip(batch["sensors"], row, strict=True)
    }

    def generation() -> int:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute("SELECT generation FROM store_state").fetchone()[0]

    before = generation()

    def send(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/observations", json=batch, headers=WRITE, timeout=60)

    # Three rounds of the same batch, twice to each replica at once: retries racing retries.
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, [a.url, b.url, a.url, b.url]))
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert {r.json()["written"] for r in answers} == {len(expected)}
    assert generation() == before + 12  # every write committed, none lost or merged away

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT sensor_id, ts, speed FROM readings").fetchall()
    assert len(rows) == len(expected) == 36 * speeds.num_sensors
    stored = {(sid, f"{np.datetime64(ts, 's')}"): v for sid, ts, v in rows}
    assert stored == expected
    ours, theirs = stored_forecast(a.url)[0], stored_forecast(b.url)[0]
    assert same_answer(ours, theirs)
    assert ours["last_observation"] == batch["timestamps"][-1]


def test_a_promoted_version_reaches_both_replicas(replicas, registry, speeds) -> None:
    a, b = replicas
    posted = readings(speeds, 300, 312)
    assert httpx.post(f"{a.url}/v1/observations", json=posted, headers=WRITE).status_code == 200
    first = [httpx.get(f"{s.url}/v1/model").json() for s in (a, b)]
    assert [registry_version(s.url) for s in (a, b)] == ["v0001", "v0001"]
    assert first[0]["version"] == first[1]["version"]
    before = [stored_forecast(s.url)[0] for s in (a, b)]
    assert same_answer(*before) and before[0]["model_version"] == first[0]["version"]

    assert main(["registry", "promote", "--registry", str(registry), "v0002"]) == 0
    for server in (a, b):
        wait_until(
            lambda url=server.url: registry_version(url) == "v0002",
            timeout_s=20,
            what=f"v0002 served by {server.url}",
        )
    second = [httpx.get(f"{s.url}/v1/model").json() for s in (a, b)]
    assert second[0]["version"] == second[1]["version"] != first[0]["version"]
    assert [m["last_swap_error"] for m in second] == [None, None]
    after = [stored_forecast(s.url)[0] for s in (a, b)]
    assert same_answer(*after) and after[0]["model_version"] == second[0]["version"]
    assert after[0]["last_observation"] == before[0]["last_observation"]
    assert after[0]["forecast"] != before[0]["forecast"]


def test_a_replica_rides_out_its_database_stopping_and_recovers_by_itself(
    tiny_run, speeds, tmp_path
) -> None:
    from pgserver import PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed")
    # Its own server (the session's must keep running), durable as a real one.
    with PostgresServer(tmp_path / "pg", durable=True) as pg:
        env = replica_env(pg.url, TRAFFICCAST_RUN_DIR=str(tiny_run["run"]))
        (server,) = start_servers([env], tmp_path)
        url = server.url
        try:
            seq_len = httpx.get(f"{url}/v1/model").json()["seq_len"]
            posted = readings(speeds, 412 - seq_len, 412)
            r = httpx.post(f"{url}/v1/observations", json=posted, headers=WRITE)
            assert r.status_code == 200, r.text
            made, _ = stored_forecast(url)

            pg.stop("fast")
            assert not pg.running()
            # Readiness is refreshed at most once a second (20 s: room for a loaded CI machine).
            wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 503, 20, "/readyz says 503")
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
            assert "database" in ready.json()["detail"]
            step = readings(speeds, 412, 413)
            refused = httpx.post(f"{url}/v1/observations", json=step, headers=WRITE, timeout=30)
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) > 0
            assert "nothing was written" in refused.json()["detail"]
            history = httpx.get(f"{url}/v1/history", params={"sensor": speeds.sensor_ids[0]})
            assert history.status_code == 503 and "Retry-After" in history.headers
            cached, cache = stored_forecast(url)  # the last forecast is still the latest one
            assert cache == "hit" and cached["forecast"] == made["forecast"]
            assert cached["last_observation"] == made["last_observation"]
            sent = httpx.post(f"{url}/v1/forecast", json=posted)  # needs no database
            assert sent.status_code == 200 and sent.json()["forecast"] == made["forecast"]
            assert httpx.get(f"{url}/healthz").status_code == 200
            assert httpx.get(f"{url}/v1/model").status_code == 200

            pg.start()
            wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 20, "ready again")
            assert server.proc.poll() is None  # the same process, never restarted
            r = httpx.post(f"{url}/v1/observations", json=step, headers=WRITE)
            assert r.status_code == 200, r.text
            after, _ = stored_forecast(url)
            assert after["last_observation"] == step["timestamps"][0]
            assert after["forecast"] != made["forecast"]
        finally:
            server.stop()
        log = server.log_path.read_text()
        assert "unexpected error" not in log


def test_serve_with_an_unsupported_database_url_is_one_line_naming_the_setting(
    tiny_run, tmp_path
) -> None:
    import os

    env = {
        **os.environ,
        "TRAFFICCAST_DATABASE_URL": "mysql://trafficcast:secret@127.0.0.1/traffic",
        "TRAFFICCAST_RUN_DIR": str(tiny_run["run"]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "trafficcast", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # it never got as far as serving
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        "error: setting database_url (--database-url or TRAFFICCAST_DATABASE_URL): "
    )
    assert "mysql://trafficcast:***@127.0.0.1/traffic" in done.stderr
    assert "only postgresql:// and sqlite:/// are supported" in done.stderr
    assert "secret" not in done.stderr
