"""The model registry: import, list, show, promote, rollback, verify, prune, and the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from trafficcast.app.cli import main
from trafficcast.app.registry import Registry, RegistryBusy


@pytest.fixture
def registry(tiny_run, tmp_path) -> Registry:
    """A registry with two versions imported from the tiny run; v0001 current."""
    root = tmp_path / "registry"
    base = [
        "registry",
        "import",
        "--registry",
        str(root),
        "--distances",
        str(tiny_run["distances"]),
    ]
    assert main([*base, str(tiny_run["run"])]) == 0
    assert main([*base, str(tiny_run["run"])]) == 0
    return Registry(root)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_list_promote_rollback(registry, capsys) -> None:
    root = str(registry.root)
    assert registry.versions() == ["v0001", "v0002"]
    assert registry.current().version == "v0001"  # the first import is promoted, later ones not

    code, out, _ = cli(capsys, "registry", "list", "--registry", root)
    assert code == 0
    rows = [line for line in out.splitlines() if line[2:4] == "v0"]
    assert [r.split()[0] for r in rows] == ["*", "v0002"]  # '*' marks v0001
    assert rows[0].split()[1] == "v0001"

    code, out, _ = cli(capsys, "registry", "promote", "--registry", root, "v0002")
    assert (code, out.strip()) == (0, "current: v0001 -> v0002")
    pointer = json.loads((registry.root / "current.json").read_text())
    assert pointer["version"] == "v0002" and pointer["history"] == ["v0001"]

    code, out, _ = cli(capsys, "registry", "show", "--registry", root)
    shown = json.loads(out)
    assert shown["version"] == "v0002" and shown["current"] is True
    assert set(shown["files"]) >= {"model.pt", "graph.npz", "config.yaml", "report.json"}

    code, out, _ = cli(capsys, "registry", "rollback", "--registry", root)
    assert (code, out.strip()) == (0, "current: v0002 -> v0001 (rollback)")
    assert registry.current().history == []
    code, _, err = cli(capsys, "registry", "rollback", "--registry", root)
    assert code == 2 and err.startswith("error: ") and "no earlier version" in err

    code, _, err = cli(capsys, "registry", "promote", "--registry", root, "v0009")
    assert code == 2 and err.strip() == (
        f"error: cannot promote v0009: {root}: no version v0009 (versions: v0001, v0002)"
    )
    code, out, _ = cli(capsys, "registry", "verify", "--registry", root)
    assert code == 0 and "ok, 2 version(s), current v0001" in out


def test_verify_finds_a_damaged_version_and_promote_refuses_it(registry, capsys) -> None:
    root = str(registry.root)
    model = registry.version_dir("v0002") / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    model.write_bytes(bytes(data))
    code, out, _ = cli(capsys, "registry", "verify", "--registry", root)
    assert code == 1
    assert "problem: v0002: model.pt does not match its SHA-256 in the manifest" in out
    code, _, err = cli(capsys, "registry", "promote", "--registry", root, "v0002")
    assert code == 2 and "cannot promote v0002" in err
    assert registry.current().version == "v0001"


def test_prune_keeps_the_newest_and_the_current(registry, tiny_run) -> None:
    from trafficcast.app.retrain import import_run

    for _ in range(3):
        import_run(registry.root, tiny_run["run"], tiny_run["distances"], None)
    assert registry.versions() == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    with registry.lock("test"):
        assert registry.prune(2) == ["v0002", "v0003"]
    # v0001 is current: kept even though it is the oldest.
    assert registry.versions() == ["v0001", "v0004", "v0005"]
    assert registry.leftovers() == []


HOLD_LOCK = """
import sys, time
from trafficcast.app.registry import Registry
lock = Registry(sys.argv[1]).lock("test holder").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_keeps_a_second_writer_out_and_dies_with_its_holder(registry, tiny_run, capsys):
    root = str(registry.root)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, root], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryBusy, match=f"pid {holder.pid}, test holder"):
            registry.lock("second").acquire()
        code, _, err = cli(capsys, "registry", "promote", "--registry", root, "v0002")
        assert code == 2 and "locked by another job" in err and f"pid {holder.pid}" in err
        code = main(
            ["retrain", "--registry", root, "--data", str(tiny_run["data"]), "--epochs", "1"]
        )
        out = capsys.readouterr()
        assert code == 4 and json.loads(out.out)["status"] == "busy"
        assert registry.current().version == "v0001"
    finally:
        # SIGKILL: no cleanup runs in the holder, yet the kernel drops its flock.
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (registry.root / ".lock").exists()  # the file stays; it is the flock that matters
    deadline = time.monotonic() + 5
    code, out, _ = cli(capsys, "registry", "promote", "--registry", root, "v0002")
    assert time.monotonic() < deadline
    assert (code, out.strip()) == (0, "current: v0001 -> v0002")
