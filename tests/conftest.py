"""Shared test settings: one torch thread.

The models under test are tiny; with several threads, each small op pays for waking the thread
pool, and on a busy 2-core machine a forward pass of a tiny DCRNN took 100x longer than with one.
One thread also keeps results bit-reproducible from run to run.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_CONFIG = """\
model:
  rnn_units: 8
  num_rnn_layers: 1
  max_diffusion_step: 2
train:
  threads: 1
baselines:
  fc_lstm_units: 16
  fc_lstm_layers: 1
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run trained through the CLI on 2 days of synthetic 5-minute data (6 sensors, 1 epoch).

    Returns a dict of paths: ``data`` (speeds.h5), ``distances``, ``config``, ``run``. Tests
    that alter files copy the run directory first.
    """
    from trafficcast.app.cli import main
    from trafficcast.data import make_synthetic, write_synthetic

    root = tmp_path_factory.mktemp("tiny_run")
    write_synthetic(make_synthetic(num_sensors=6, num_days=2, seed=2), root / "syn")
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    paths = {
        "data": root / "syn" / "speeds.h5",
        "distances": root / "syn" / "distances.csv",
        "config": config,
        "run": root / "run",
    }
    argv = ["train", "--data", str(paths["data"]), "--distances", str(paths["distances"])]
    argv += [
        "--config",
        str(config),
        "--epochs",
        "1",
        "--no-progress",
        "--output",
        str(paths["run"]),
    ]
    assert main(argv) == 0
    return paths


# ---- PostgreSQL: a real server, started once per test session -------------------------------


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server (``tests/pgserver.py``) for the session. Skipped where
    PostgreSQL is not installed, except in CI (``CI`` set), which installs it: there its absence
    fails."""
    import os

    from pgserver import PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


_databases = iter(range(10**6))


@pytest.fixture
def postgres_url(postgres) -> str:
    """The URL of a new, empty database on the session's server (one per test)."""
    import psycopg

    name = f"test_{next(_databases)}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """Each backend in turn: a fresh SQLite file's path, then a fresh PostgreSQL database's URL
    (as ``TRAFFICCAST_DATABASE_URL`` would give it)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("postgres_url")
