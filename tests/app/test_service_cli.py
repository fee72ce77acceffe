"""``trafficcast serve``: registration, settings from flags and environment, one-line errors."""

from __future__ import annotations

import argparse

import pytest

from trafficcast.app.commands import serve_cmd
from trafficcast.app.commands.common import user_error_types
from trafficcast.app.exit_status import EXIT_USER_ERROR


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trafficcast")
    serve_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def run_like_cli(argv: list[str], capsys) -> tuple[int, str]:
    """What trafficcast.app.cli.main does with a handler's user error (serve is registered there later)."""
    args = parse(argv)
    try:
        code = args.handler(args)
    except user_error_types() as exc:
        print(f"error: {' '.join(str(exc).split())}", file=__import__("sys").stderr)
        code = EXIT_USER_ERROR
    return code, capsys.readouterr().err


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, service_run_dir) -> None:
    monkeypatch.setenv("TRAFFICCAST_PORT", "9100")
    monkeypatch.setenv("TRAFFICCAST_API_KEYS", "k")
    args = parse(["serve", "--run", str(service_run_dir), "--host", "127.0.0.2"])
    settings = serve_cmd.build_settings(args)
    assert settings.run_dir == service_run_dir
    assert (settings.host, settings.port, settings.api_keys) == ("127.0.0.2", 9100, ["k"])
    assert parse(["serve"]).run is None


def test_missing_run_is_one_line_error(tmp_path, capsys) -> None:
    code, err = run_like_cli(["serve", "--run", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "nope: no such run directory" in err
    code, err = run_like_cli(["serve", "--run", str(tmp_path)], capsys)
    assert code == 2 and "no model.pt" in err and "trafficcast train" in err


def test_bad_setting_is_one_line_error(monkeypatch, service_run_dir, capsys) -> None:
    code, err = run_like_cli(["serve", "--run", str(service_run_dir), "--port", "70000"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "port" in err and "70000" in err
    monkeypatch.setenv("TRAFFICCAST_TORCH_THREADS", "zero")
    code, err = run_like_cli(["serve", "--run", str(service_run_dir)], capsys)
    assert code == 2 and "torch_threads" in err and "TRAFFICCAST_TORCH_THREADS" in err


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_a_database_url_of_another_engine_is_one_line_without_its_password(
    source, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    url = "mysql://trafficcast:hunter2@db.example/trafficcast"
    argv = ["serve"]
    if source == "flag":
        argv += ["--database-url", url]
    else:
        monkeypatch.setenv("TRAFFICCAST_DATABASE_URL", url)
    code, err = run_like_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: setting database_url")
    assert "only postgresql:// and sqlite:/// are supported" in err
    assert "hunter2" not in err and "mysql://trafficcast:***@db.example/trafficcast" in err
