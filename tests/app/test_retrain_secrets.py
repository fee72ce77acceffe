"""``trafficcast retrain`` keeps the database's password off its command line.

Every user of a machine reads a process's arguments (``ps``, ``/proc/PID/cmdline``); the
environment and a secret file are private to its owner. A real job runs against a real
PostgreSQL database whose URL carries a password, given by ``--observations-from-env`` or by
``--observations-url-file``, while this test reads the command line of every process on the
machine.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY_CONFIG
from trafficcast.app.cli import main
from trafficcast.app.observations import ObservationStore
from trafficcast.app.settings import load_settings
from trafficcast.data import read_speeds
from trafficcast.models.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def command_lines() -> dict[int, str]:
    """Every readable process's command line, its arguments joined by spaces."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile, or not ours to read
                continue
            found[int(entry.name)] = raw.replace(b"\0", b" ").decode("utf-8", "replace")
    return found


def watch(proc: subprocess.Popen, marker: str, secret: str) -> tuple[int, list[str]]:
    """Poll every command line until ``proc`` ends: how many times a process carrying
    ``marker`` was seen, and the command lines that held ``secret``."""
    seen, leaks = 0, []
    while proc.poll() is None:
        for line in command_lines().values():
            seen += marker in line
            if secret in line:
                leaks.append(line)
        time.sleep(0.05)
    return seen, leaks


def with_password(url: str, password: str) -> str:
    """``postgresql://user@host/db`` as ``postgresql://user:password@host/db``. The test server
    trusts local connections, so any password connects, and the job really uses this URL."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{password}@{host}"


def test_the_watch_sees_a_password_on_a_command_line() -> None:
    """The probe itself: a password that is on a command line is found."""
    secret = secrets.token_hex(8)
    code = "import time; time.sleep(1.5)"
    proc = subprocess.Popen([sys.executable, "-c", code, f"postgresql://u:{secret}@h/db"])
    seen, leaks = watch(proc, code, secret)
    assert seen > 0 and len(leaks) > 0 and secret in leaks[0]


@pytest.mark.parametrize("how", ["--observations-from-env", "--observations-url-file"])
def test_retrain_on_postgresql_keeps_the_password_off_its_command_line(
    how: str, tiny_run, postgres_url: str, tmp_path: Path
) -> None:
    secret = "pw-" + secrets.token_hex(8)
    url = with_password(postgres_url, secret)
    speeds = read_speeds(tiny_run["data"])
    store = ObservationStore(url)
    future = pd.date_range(speeds.index[-1] + pd.Timedelta(minutes=5), periods=24, freq="5min")
    store.add(speeds.sensor_ids, future, np.full((24, speeds.num_sensors), 55.0))
    store.close()

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG + "  fc_lstm: false\n")
    summary = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "trafficcast", "retrain"]
    argv += ["--registry", str(tmp_path / "registry"), "--data", str(tiny_run["data"])]
    argv += ["--distances", str(tiny_run["distances"]), "--config", str(config)]
    argv += ["--epochs", "1", "--no-progress", "--summary", str(summary)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICCAST_")}
    if how == "--observations-from-env":
        argv.append(how)
        env["TRAFFICCAST_DATABASE_URL"] = url
    else:
        secret_file = tmp_path / "database-url"
        secret_file.write_text(url + "\n")
        secret_file.chmod(0o600)
        argv += [how, str(secret_file)]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=stdout, stderr=stderr)
        try:
            seen, leaks = watch(proc, how, secret)
        finally:
            proc.kill()
            proc.wait()

    assert proc.returncode == 0, err.read_text()[-3000:]
    assert seen > 0, "the job's command line was never seen"
    assert leaks == []
    # It did read the database the URL names: the 24 stored steps were merged.
    result = json.loads(summary.read_text())
    observations = result["job"]["data"]["observations"]
    assert observations["readings"] == 24 * speeds.num_sensors
    for text in (out.read_text(), err.read_text(), summary.read_text()):
        assert secret not in text


def test_database_url_file_is_a_setting_of_the_service_too(tmp_path: Path, monkeypatch) -> None:
    url = "postgresql://trafficcast:hunter2@db.example:5432/trafficcast"
    secret_file = tmp_path / "database-url"
    secret_file.write_text(f"  {url}\n")
    monkeypatch.delenv("TRAFFICCAST_DATABASE_URL", raising=False)
    monkeypatch.setenv("TRAFFICCAST_DATABASE_URL_FILE", str(secret_file))
    assert load_settings().database == url

    monkeypatch.setenv("TRAFFICCAST_DATABASE_URL", url)
    with pytest.raises(ConfigError, match="both set: give one"):
        load_settings()
    monkeypatch.delenv("TRAFFICCAST_DATABASE_URL")

    missing = tmp_path / "absent"
    monkeypatch.setenv("TRAFFICCAST_DATABASE_URL_FILE", str(missing))
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == (
        f"settings: database_url_file (TRAFFICCAST_DATABASE_URL_FILE): cannot read {missing}: "
        "No such file or directory"
    )

    # A file that holds something else: its content (maybe a password) is never shown.
    secret_file.write_text("hunter2\n")
    monkeypatch.setenv("TRAFFICCAST_DATABASE_URL_FILE", str(secret_file))
    with pytest.raises(ConfigError, match="holds no database URL") as refused:
        load_settings()
    assert "hunter2" not in str(refused.value)


def test_retrain_refuses_an_unreadable_url_file_in_one_line(tiny_run, tmp_path, capsys) -> None:
    missing = tmp_path / "absent"
    argv = ["retrain", "--registry", str(tmp_path / "registry"), "--data", str(tiny_run["data"])]
    code = main([*argv, "--no-progress", "--observations-url-file", str(missing)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot read {missing}: No such file or directory"
    )
