"""The CLI reads ``TRAFFICCAST_*`` only through the service's settings object."""

from __future__ import annotations

from pathlib import Path

import pytest

from trafficcast.app.cli import main

APP = Path(__file__).resolve().parents[2] / "app"


def test_registry_comes_from_the_flag_else_the_setting(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TRAFFICCAST_REGISTRY", raising=False)
    assert main(["registry", "list"]) == 2
    assert capsys.readouterr().err == (
        "error: no registry: give --registry DIR or set TRAFFICCAST_REGISTRY\n"
    )
    monkeypatch.setenv("TRAFFICCAST_REGISTRY", str(tmp_path / "from-env"))
    assert main(["registry", "list"]) == 2
    assert (
        capsys.readouterr().err == f"error: {tmp_path / 'from-env'}: no such registry directory\n"
    )
    # The flag wins over the environment.
    assert main(["registry", "list", "--registry", str(tmp_path / "flag")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'flag'}: no such registry directory\n"


@pytest.mark.parametrize("module", sorted((APP / "commands").glob("*.py")), ids=lambda p: p.name)
def test_no_command_reads_the_environment_itself(module: Path) -> None:
    source = module.read_text(encoding="utf-8")
    assert "os.environ" not in source and "getenv" not in source
