"""The heavy commands restart themselves under tcmalloc (app/allocator.py).

The decision is a pure function of the environment, tested case by case; the restart itself is
tested on a real ``trafficcast serve`` process, whose memory map shows which allocator it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import free_port
from trafficcast.app.allocator import (
    ENV_RESTARTED,
    ENV_SETTING,
    AllocatorError,
    allocator_for,
    find_tcmalloc,
    preloaded_allocator,
    restart_plan,
)

LIB = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def test_auto_restarts_with_tcmalloc_prepended_to_an_existing_preload():
    plan = restart_plan({"LD_PRELOAD": "/opt/libother.so", "KEEP": "1"}, "linux", LIB)
    assert plan is not None
    assert plan["LD_PRELOAD"] == f"{LIB} /opt/libother.so"
    assert plan[ENV_RESTARTED] == "tcmalloc"
    assert plan["KEEP"] == "1"
    assert restart_plan({ENV_SETTING: "TCMalloc"}, "linux", LIB)["LD_PRELOAD"] == str(LIB)


@pytest.mark.parametrize(
    "env",
    [
        {ENV_SETTING: "system"},
        {ENV_RESTARTED: "tcmalloc"},  # restarted once already: never loop
        {"LD_PRELOAD": "/usr/local/lib/libtcmalloc_minimal.so.4"},  # the Docker image
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ],
)
def test_no_restart_when_switched_off_done_or_already_preloaded(env):
    assert restart_plan(env, "linux", LIB) is None


def test_without_a_library_auto_carries_on_and_tcmalloc_is_refused():
    assert restart_plan({}, "linux", None) is None
    assert restart_plan({}, "darwin", LIB) is None
    with pytest.raises(AllocatorError, match="no tcmalloc library was found.*libtcmalloc-minimal4"):
        restart_plan({ENV_SETTING: "tcmalloc"}, "linux", None)
    with pytest.raises(AllocatorError, match="Linux only"):
        restart_plan({ENV_SETTING: "tcmalloc"}, "darwin", LIB)


def test_a_bad_setting_names_the_variable_and_the_choices():
    with pytest.raises(AllocatorError, match="TRAFFICCAST_ALLOCATOR='fast' is not one of auto"):
        restart_plan({ENV_SETTING: "fast"}, "linux", LIB)


def test_find_tcmalloc_prefers_the_environment_then_the_system_dirs(tmp_path):
    system = tmp_path / "usr-lib"
    system.mkdir()
    (system / "libtcmalloc.so.4").write_bytes(b"")
    assert find_tcmalloc([system], prefix=str(tmp_path / "venv")) == system / "libtcmalloc.so.4"
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    ours = tmp_path / "venv" / "lib" / "libtcmalloc_minimal.so.4"
    ours.write_bytes(b"")
    assert find_tcmalloc([system], prefix=str(tmp_path / "venv")) == ours
    assert find_tcmalloc([tmp_path / "nothing"], prefix=str(tmp_path / "none")) is None


def test_preloaded_allocator_reads_ld_preload():
    assert preloaded_allocator({"LD_PRELOAD": "/x/libtcmalloc.so.4"}) == "tcmalloc"
    assert preloaded_allocator({"LD_PRELOAD": ""}) is None
    assert preloaded_allocator({}) is None


def test_allocator_for_reports_what_a_heavy_command_would_run_under():
    assert allocator_for({"LD_PRELOAD": "/x/libjemalloc.so.2"}) == "jemalloc"
    assert allocator_for({ENV_SETTING: "system"}) == "system"
    expected = "tcmalloc" if find_tcmalloc() and sys.platform.startswith("linux") else "system"
    assert allocator_for({}) == expected


def test_a_bad_setting_is_a_one_line_cli_error(tmp_path):
    env = {**os.environ, ENV_SETTING: "fast"}
    env.pop(ENV_RESTARTED, None)
    missing = tmp_path / "nothing.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "trafficcast", "summary", "--data", str(missing)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # summary is not a heavy command: the setting is not even read
    assert "TRAFFICCAST_ALLOCATOR" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trafficcast",
            "predict",
            "--run",
            str(tmp_path),
            "--data",
            str(missing),
            "--at",
            "2012-03-01 00:00",
            "--output",
            str(tmp_path / "f.csv"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: TRAFFICCAST_ALLOCATOR='fast' is not one of auto, tcmalloc, system"
    ]


def _serve_and_read_maps(env: dict[str, str], tmp_path: Path, run_dir: Path) -> str:
    """Start ``python -m trafficcast serve``, wait for /readyz, return the memory map of the PID we
    started: the restart is an ``execve``, so that PID is the server."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trafficcast", "serve", "--run", str(run_dir), "--port", str(port)],
            env={
                **env,
                "TRAFFICCAST_OBSERVATIONS_DB": str(tmp_path / f"obs-{port}.sqlite3"),
                "TRAFFICCAST_SEED_OBSERVATIONS": "none",
                "TRAFFICCAST_TORCH_THREADS": "1",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            return Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_serve_restarts_in_place_under_tcmalloc_unless_told_not_to(tmp_path, service_run_dir):
    library = find_tcmalloc()
    if library is None:
        pytest.skip("no tcmalloc on this machine (apt-get install libtcmalloc-minimal4)")
    base = {k: v for k, v in os.environ.items() if k not in (ENV_RESTARTED, ENV_SETTING)}
    base["LD_PRELOAD"] = ""
    maps = _serve_and_read_maps(base, tmp_path, service_run_dir)
    assert library.name in maps
    maps = _serve_and_read_maps({**base, ENV_SETTING: "system"}, tmp_path, service_run_dir)
    assert "tcmalloc" not in maps
