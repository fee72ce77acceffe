"""Fault injection: ``trafficcast retrain`` SIGKILLed (for real, by itself, through the
``TRAFFICCAST_FAULT_POINT`` hook) during training, half way through writing the checkpoint into
the new version, and between writing and renaming the new ``current`` pointer. After each kill the
registry verifies, ``registry list`` works, the pointer names the previous complete version, a
running service still serves it; the rerun resumes where the job died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.app.conftest import registry_server
from tests.app.test_hot_swap import forecast_body, wait_for
from tests.conftest import TINY_CONFIG
from trafficcast.app.cli import main
from trafficcast.app.registry import FAULT_ENV, Registry


def trafficcast(*argv: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "trafficcast", *argv], env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_sigkill_at_three_points_leaves_a_valid_registry_and_the_rerun_resumes(
    tiny_run, tmp_path, capsys
) -> None:
    def cli(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().out

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG + "  fc_lstm: false\n")
    root = tmp_path / "registry"
    registry = Registry(root)
    job = ["retrain", "--registry", str(root), "--data", str(tiny_run["data"]), "--no-progress"]
    # --force: every rerun promotes, so each round moves the pointer and the next fault point
    # (promotion) is reached whatever the metrics.
    job += ["--epochs", "2", "--force"]
    # The first version, in-process (the subprocesses below are the ones that get killed).
    assert cli(*job, "--distances", str(tiny_run["distances"]), "--config", str(config))[0] == 0
    assert registry.current().version == "v0001"

    server = registry_server(root, tmp_path)
    body = forecast_body(tiny_run["data"])
    try:
        server.wait_ready()
        serving = "v0001"
        for fault, resumed_stage, next_version in (
            ("training", "training", "v0002"),
            ("checkpoint-write", "trained", "v0003"),
            ("promotion", "published", "v0004"),
        ):
            killed = trafficcast(*job, fault=fault)
            assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-2000:])
            # The registry is valid and still names the previous version ...
            code, out = cli("registry", "verify", "--registry", str(root))
            assert code == 0, (fault, out)
            assert "interrupted retrain job waits in staging/" in out
            code, out = cli("registry", "list", "--registry", str(root))
            assert code == 0 and f"current: {serving}" in out
            assert registry.current().version == serving
            assert not registry.verify_version(serving)
            if fault == "checkpoint-write":
                # The torn copy is in a temporary directory nobody reads, not a version.
                torn = registry.leftovers()
                assert len(torn) == 1 and torn[0].name.startswith(f".tmp-{next_version}-")
                src = registry.staging_dir / "run" / "model.pt"
                assert 0 < (torn[0] / "model.pt").stat().st_size < src.stat().st_size
                assert next_version not in registry.versions()
            if fault == "promotion":
                assert any(p.name.startswith(".current.json.") for p in registry.leftovers())
            # ... and the running service still serves it.
            info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
            assert info["registry"]["version"] == serving and info["last_swap_error"] is None
            r = httpx.post(f"{server.url}/v1/forecast", json=body, timeout=30)
            assert r.status_code == 200

            # The rerun resumes the interrupted job where it died.
            rerun = trafficcast(*job)
            assert rerun.returncode == 0, rerun.stderr[-2000:]
            summary = json.loads(rerun.stdout)
            assert summary["status"] == "promoted" and summary["current"] == next_version
            assert summary["resumed"]["stage"] == resumed_stage
            if fault == "training":
                # Killed in epoch 2: epoch 1's state was on disk and training went on from it.
                assert summary["resumed"]["epoch"] == 1
                assert "dcrnn: resumed after epoch 1" in rerun.stderr
            else:
                assert "dcrnn epoch" not in rerun.stderr  # training was not redone
            assert registry.leftovers() == [] and not registry.staging_dir.exists()
            wait_for(server.url, lambda m, v=next_version: m["registry"]["version"] == v)
            serving = next_version
        code, out = cli("registry", "verify", "--registry", str(root))
        assert code == 0 and "current v0004" in out
    finally:
        server.stop()
