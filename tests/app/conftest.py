"""Fixtures for the service tests: one tiny DCRNN trained once per session on real METR-LA data.

The model is small (8 units, one layer, one epoch on one day of the bundled week) so that the
whole session pays a few seconds for it; the service code does not care how good it is.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from trafficcast import data


def train_tiny_run(root: Path, model: dict, baselines: dict) -> Path:
    """Train a tiny run on the first day of the bundled week into ``root/run``: one epoch, the
    model and baselines settings as given."""
    from trafficcast.app.pipeline import TrainOptions, train_run
    from trafficcast.models.config import RunConfig

    week = data.read_speeds(data.sample_speeds_path())
    one_day = root / "one-day.h5"
    data.write_speeds(week.slice_steps(0, 288), one_day)
    run_dir = root / "run"
    config = RunConfig.from_dict({"model": model, "train": {"epochs": 1}, "baselines": baselines})
    train_run(
        TrainOptions(
            data=one_day,
            output=run_dir,
            adjacency=data.sample_adjacency_pkl_path(),
            config=config,
            progress=False,
            log=lambda message: None,
        )
    )
    return run_dir


@pytest.fixture(scope="session")
def service_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(
        tmp_path_factory.mktemp("service-run"),
        model={"rnn_units": 8, "num_rnn_layers": 1},
        baselines={"fc_lstm": False},
    )


@pytest.fixture(scope="module")
def fc_lstm_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run like :func:`service_run_dir` that trained the FC-LSTM (16 units) and no other
    baseline."""
    return train_tiny_run(
        tmp_path_factory.mktemp("fc-lstm-run"),
        model={"rnn_units": 8, "num_rnn_layers": 1},
        baselines={"fc_lstm": True, "fc_lstm_units": 16, "gru": False, "tcn": False},
    )


@pytest.fixture(scope="session")
def uncalibrated_run_dir(service_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run as a run written before training calibrated its intervals: no ``"intervals"``
    in its checkpoint, everything else the same."""
    import shutil

    from trafficcast.models.checkpoint import load_checkpoint, save_checkpoint

    run_dir = tmp_path_factory.mktemp("uncalibrated") / "run"
    shutil.copytree(service_run_dir, run_dir)
    payload = load_checkpoint(run_dir / "model.pt")
    assert "intervals" in payload  # training calibrates
    del payload["intervals"]
    save_checkpoint(run_dir / "model.pt", payload)
    return run_dir


@pytest.fixture
def service_settings(service_run_dir: Path, tmp_path: Path):
    """Settings for one app: the tiny run, a fresh SQLite file, one write key, no seeding."""
    from trafficcast.app.settings import Settings

    return Settings(
        run_dir=service_run_dir,
        observations_db=tmp_path / "observations.sqlite3",
        api_keys=["test-key"],
        seed_observations=None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``uvicorn --factory trafficcast.app.service:app_from_env`` in a subprocess, on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env}
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "trafficcast.app.service:app_from_env",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = log_path

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"server not ready in {timeout_s} s: {self.log_path.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def registry_server(root: Path, tmp_path: Path) -> LiveServer:
    """A real server (not yet started) that serves from the registry at ``root``, checking its
    pointer every 0.2 s, with an empty observation store."""
    return LiveServer(
        {
            "TRAFFICCAST_REGISTRY": str(root),
            "TRAFFICCAST_REGISTRY_POLL_S": "0.2",
            "TRAFFICCAST_OBSERVATIONS_DB": str(tmp_path / "obs.sqlite3"),
            "TRAFFICCAST_SEED_OBSERVATIONS": "none",
            "TRAFFICCAST_TORCH_THREADS": "1",
        },
        tmp_path / "server.log",
    )


@pytest.fixture
def live_server(service_run_dir: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """A real server with the tiny model and the last day of the bundled week in its store."""
    server = LiveServer(
        {
            "TRAFFICCAST_RUN_DIR": str(service_run_dir),
            "TRAFFICCAST_OBSERVATIONS_DB": str(tmp_path / "live.sqlite3"),
            "TRAFFICCAST_SEED_OBSERVATIONS": str(data.sample_speeds_path()),
            "TRAFFICCAST_API_KEYS": "live-key",
            "TRAFFICCAST_TORCH_THREADS": "1",
        },
        tmp_path / "server.log",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
