"""`trafficcast train | evaluate | predict` through the real CLI: the happy path and bad inputs."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast.app.cli import main
from trafficcast.data import SpeedData, make_synthetic, read_speeds, write_speeds, write_synthetic
from trafficcast.graph import save_adjacency
from trafficcast.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
HORIZONS = ("15min", "30min", "60min")


def _user_error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error; return its one stderr line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest
    return subprocess.run(
        [sys.executable, "-m", "trafficcast", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def _copy_run(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    return run


# ---- happy path ------------------------------------------------------------------------------
def test_train_writes_the_run_directory(tiny_run):
    run = tiny_run["run"]
    for name in ("model.pt", "fc_lstm.pt", "gru.pt", "tcn.pt", "config.yaml", "report.json",
                 "report.md"):  # fmt: skip
        assert (run / name).is_file(), name
    for name in ("mae_by_horizon.png", "forecast_vs_actual.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = json.loads((run / "report.json").read_text())
    # 2 days of 5-minute data: 576 steps, 553 windows split as DCRNN rounds them.
    assert report["dataset"] == {"sensors": 6, "steps": 576, "freq_minutes": 5}
    assert report["split"] == {"train": 387, "val": 55, "test": 111}
    assert list(report["metrics"]) == [
        "dcrnn", "persistence", "historical_average", "fc_lstm", "gru", "tcn"
    ]  # fmt: skip
    # Every trained model's training time, as its checkpoint recorded it.
    assert list(report["training_s"]) == ["dcrnn", "fc_lstm", "gru", "tcn"]
    for name, file in (("dcrnn", "model.pt"), ("gru", "gru.pt"), ("tcn", "tcn.pt")):
        training = load_checkpoint(run / file)["training"]
        assert report["training_s"][name] == training["wall_time_s"] > 0
        assert training["epochs_run"] == 1
    for by_horizon in report["metrics"].values():
        assert list(by_horizon) == [*HORIZONS, "average"]
        for metrics in by_horizon.values():
            assert set(metrics) == {"mae", "rmse", "mape_pct"}
            assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
            assert 0 < metrics["mae"] <= metrics["rmse"]
    resolved = (run / "config.yaml").read_text()
    assert "rnn_units: 8" in resolved and "epochs: 1" in resolved


def test_persistence_metric_matches_an_independent_computation(tiny_run):
    report = json.loads((tiny_run["run"] / "report.json").read_text())
    speeds = read_speeds(tiny_run["data"])
    values, mask = speeds.values.astype(np.float64), speeds.mask
    test_starts = np.arange(387 + 55, 387 + 55 + 111)
    for key, step in (("15min", 3), ("60min", 12)):
        errors = []
        for s in test_starts:
            target_row = s + 12 + step - 1
            for sensor in range(speeds.num_sensors):
                if not mask[target_row, sensor]:
                    continue
                observed = [t for t in range(s, s + 12) if mask[t, sensor]]
                assert observed, "the synthetic data has no 12-step outage in the test split"
                errors.append(abs(values[observed[-1], sensor] - values[target_row, sensor]))
        assert report["metrics"]["persistence"][key]["mae"] == pytest.approx(
            np.mean(errors), abs=1e-3
        )


@pytest.mark.slow
def test_evaluate_and_predict_through_the_console(tiny_run, tmp_path):
    out = tmp_path / "eval" / "report.json"
    out.parent.mkdir()
    result = _cli("evaluate", "--run", str(tiny_run["run"]), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "persistence" in result.stdout and "wrote" in result.stdout
    report = json.loads(out.read_text())
    trained = json.loads((tiny_run["run"] / "report.json").read_text())
    # Evaluation is deterministic: the same numbers as the report written after training.
    assert report["metrics"] == trained["metrics"] and report["split"] == trained["split"]
    # The console table ends with the MAE over the whole horizon.
    row = next(line for line in result.stdout.splitlines() if line.startswith("persistence "))
    assert row.split()[-1] == f"{report['metrics']['persistence']['average']['mae']:.3f}"
    assert (out.parent / "report.md").read_text().startswith("# trafficcast evaluation")
    assert (out.parent / "mae_by_horizon.png").exists()
    assert (out.parent / "forecast_vs_actual.png").exists()

    forecast_path = tmp_path / "forecast.csv"
    code = main(
        ["predict", "--run", str(tiny_run["run"]), "--data", str(tiny_run["data"]),
         "--at", "2012-03-02T12:00", "--output", str(forecast_path)]
    )  # fmt: skip
    assert code == 0
    frame = pd.read_csv(forecast_path, index_col="timestamp", parse_dates=True)
    speeds = read_speeds(tiny_run["data"])
    assert frame.shape == (12, 6)
    assert list(frame.columns.astype(str)) == speeds.sensor_ids
    expected_index = pd.date_range("2012-03-02 12:05", periods=12, freq="5min")
    assert (frame.index == expected_index).all()
    assert np.isfinite(frame.to_numpy()).all()
    assert 20 < frame.to_numpy().mean() < 90  # mph, around the data's speeds


# ---- bad inputs: train -----------------------------------------------------------------------
def _short_data(tmp_path, steps: int) -> tuple[Path, Path]:
    data = make_synthetic(num_sensors=3, num_days=1, seed=0)
    write_synthetic(data, tmp_path / "syn")
    short = data.speeds.slice_steps(0, steps)
    write_speeds(short, tmp_path / "short.csv")
    return tmp_path / "short.csv", tmp_path / "syn" / "distances.csv"


def _train_argv(data, distances, tmp_path, *extra) -> list[str]:
    return ["train", "--data", str(data), "--distances", str(distances), "--epochs", "1",
            "--no-progress", "--output", str(tmp_path / "out"), *extra]  # fmt: skip


def test_train_too_little_data_for_one_window(tmp_path, capsys):
    data, distances = _short_data(tmp_path, 20)
    line = _user_error(_train_argv(data, distances, tmp_path), capsys)
    assert "at least 24 time steps" in line and "has 20" in line
    assert not (tmp_path / "out" / "model.pt").exists()


def test_train_too_little_data_for_the_split(tmp_path, capsys):
    data, distances = _short_data(tmp_path, 26)
    line = _user_error(_train_argv(data, distances, tmp_path), capsys)
    # 26 steps give 3 windows: train/val/test = 2/0/1.
    assert "3 windows" in line and "2/0/1" in line


def test_train_graph_sensors_must_match_the_data(tiny_run, tmp_path, capsys):
    ids = read_speeds(tiny_run["data"]).sensor_ids
    graph_ids = ids[:4] + ["999001", "999002", "999003"]
    adj = np.eye(7, dtype=np.float32)
    save_adjacency(tmp_path / "adj.npz", graph_ids, adj)
    argv = ["train", "--data", str(tiny_run["data"]), "--adjacency", str(tmp_path / "adj.npz"),
            "--epochs", "1", "--output", str(tmp_path / "out")]  # fmt: skip
    line = _user_error(argv, capsys)
    assert "adj.npz" in line
    assert "2 of 6 data sensors are not in the graph" in line
    assert "3 of 7 graph sensors are not in the data" in line


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("model:\n  max_diffusion_step: -1\n", "model.max_diffusion_step = -1"),
        ("train:\n  base_lr: -1\n", "train.base_lr = -1.0"),
        ("model:\n  filter_type: foo\n", "model.filter_type = 'foo'"),
        ("model:\n  rnn_unit: 8\n", "unknown key(s) 'rnn_unit'"),
        ("modle:\n  rnn_units: 8\n", "unknown section(s) 'modle'"),
    ],
)
def test_train_bad_config(tiny_run, tmp_path, capsys, yaml_text, expected):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml_text)
    argv = _train_argv(tiny_run["data"], tiny_run["distances"], tmp_path, "--config", str(config))
    line = _user_error(argv, capsys)
    assert expected in line and "cfg.yaml" in line
    assert not (tmp_path / "out").exists()


def test_train_epochs_must_be_positive(tiny_run, tmp_path, capsys):
    argv = _train_argv(tiny_run["data"], tiny_run["distances"], tmp_path)
    argv[argv.index("--epochs") + 1] = "0"
    assert "--epochs = 0" in _user_error(argv, capsys)


# ---- bad inputs: checkpoints -----------------------------------------------------------------
class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _evaluate_and_predict_fail(run: Path, data: Path, tmp_path: Path, capsys) -> list[str]:
    lines = [
        _user_error(["evaluate", "--run", str(run), "--output", str(tmp_path / "r.json")], capsys)
    ]
    lines.append(
        _user_error(
            ["predict", "--run", str(run), "--data", str(data), "--at", "2012-03-02T12:00",
             "--output", str(tmp_path / "f.csv")],
            capsys,
        )
    )  # fmt: skip
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "f.csv").exists()
    return lines


def test_checkpoint_of_random_bytes(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    (run / "model.pt").write_bytes(np.random.default_rng(1).bytes(20_000))
    for line in _evaluate_and_predict_fail(run, tiny_run["data"], tmp_path, capsys):
        assert "model.pt: not a trafficcast checkpoint" in line


def test_altered_checkpoint(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    raw = bytearray((run / "model.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    (run / "model.pt").write_bytes(bytes(raw))
    for line in _evaluate_and_predict_fail(run, tiny_run["data"], tmp_path, capsys):
        assert "model.pt" in line and (
            "altered or is corrupt" in line or "not a trafficcast" in line
        )


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_checkpoint_is_refused_and_runs_nothing(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    marker = tmp_path / "pwned.txt"
    (run / "model.pt").write_bytes(pickle.dumps({"format": _Exploit(str(marker))}))
    for line in _evaluate_and_predict_fail(run, tiny_run["data"], tmp_path, capsys):
        assert "not a trafficcast checkpoint" in line
    assert not marker.exists()


def test_evaluate_without_a_run(tmp_path, capsys):
    line = _user_error(["evaluate", "--run", str(tmp_path / "nope")], capsys)
    assert "nope" in line


# ---- bad inputs: predict ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2012-03-05T12:00", "not a time step of"),
        ("2012-03-01T12:02", "not a time step of"),
        ("2012-03-01T00:50", "needs 12 steps of history"),
        ("yesterday-ish", "is not a timestamp"),
    ],
)
def test_predict_bad_at(tiny_run, tmp_path, capsys, at, expected):
    argv = ["predict", "--run", str(tiny_run["run"]), "--data", str(tiny_run["data"]),
            "--at", at, "--output", str(tmp_path / "f.csv")]  # fmt: skip
    line = _user_error(argv, capsys)
    assert expected in line
    assert not (tmp_path / "f.csv").exists()


def test_predict_earliest_possible_at_works(tiny_run, tmp_path):
    out = tmp_path / "f.csv"
    argv = ["predict", "--run", str(tiny_run["run"]), "--data", str(tiny_run["data"]),
            "--at", "2012-03-01T00:55", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert pd.read_csv(out).shape == (12, 7)


def test_predict_data_missing_model_sensors(tiny_run, tmp_path, capsys):
    speeds = read_speeds(tiny_run["data"])
    fewer = SpeedData(
        speeds.index, speeds.sensor_ids[:4], speeds.values[:, :4], speeds.mask[:, :4], 5
    )
    write_speeds(fewer, tmp_path / "fewer.csv")
    argv = ["predict", "--run", str(tiny_run["run"]), "--data", str(tmp_path / "fewer.csv"),
            "--at", "2012-03-02T12:00", "--output", str(tmp_path / "f.csv")]  # fmt: skip
    assert "2 of the model's 6 sensors are not in the data" in _user_error(argv, capsys)


def test_train_with_a_short_horizon_reports_or_refuses(tiny_run, tmp_path, capsys):
    config = tmp_path / "h6.yaml"
    config.write_text("model:\n  rnn_units: 8\n  num_rnn_layers: 1\n  horizon: 6\n"
                      "baselines:\n  fc_lstm: false\n")  # fmt: skip
    argv = _train_argv(tiny_run["data"], tiny_run["distances"], tmp_path, "--config", str(config))
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 0:
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["metrics"]["dcrnn"]["60min"]["mae"] is None
        assert math.isfinite(report["metrics"]["dcrnn"]["30min"]["mae"])
    else:
        assert code == 2 and captured.err.startswith("error: ") and "horizon" in captured.err


# ---- the baselines ---------------------------------------------------------------------------
def test_report_opens_with_the_graphs_worth(tiny_run):
    report = json.loads((tiny_run["run"] / "report.json").read_text())
    md = (tiny_run["run"] / "report.md").read_text().splitlines()
    gains = [
        100
        * (report["metrics"]["gru"][h]["mae"] - report["metrics"]["dcrnn"][h]["mae"])
        / report["metrics"]["gru"][h]["mae"]
        for h in HORIZONS
    ]
    assert md[2].startswith("The road graph ")
    for gain in gains:
        assert f"{abs(gain):.1f} %" in md[2]
    row = next(line for line in md if line.startswith("| gru |"))
    assert row.count("|") == 12 and row.endswith(f"| {report['training_s']['gru']:.0f} |")
    assert next(line for line in md if line.startswith("| persistence |")).endswith("| - |")


def test_baselines_switched_off_leave_no_checkpoint_and_no_row(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    config = tmp_path / "off.yaml"
    config.write_text(
        "model:\n  rnn_units: 8\n  num_rnn_layers: 1\ntrain:\n  threads: 1\n"
        "baselines:\n  fc_lstm: false\n  gru: false\n  tcn: false\n"
    )
    argv = ["train", "--data", str(tiny_run["data"]), "--distances", str(tiny_run["distances"]),
            "--config", str(config), "--epochs", "1", "--no-progress", "--output", str(run),
            "--overwrite"]  # fmt: skip
    assert main(argv) == 0
    for name in ("fc_lstm.pt", "gru.pt", "tcn.pt"):
        assert not (run / name).exists(), name
    report = json.loads((run / "report.json").read_text())
    assert list(report["metrics"]) == ["dcrnn", "persistence", "historical_average"]
    assert list(report["training_s"]) == ["dcrnn"]
    assert (run / "report.md").read_text().splitlines()[2].startswith("Test split:")


def test_train_refuses_to_overwrite_a_finished_run(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("model.pt", "report.json")}
    argv = ["train", "--data", str(tiny_run["data"]), "--distances", str(tiny_run["distances"]),
            "--config", str(tiny_run["config"]), "--epochs", "1", "--no-progress",
            "--output", str(run)]  # fmt: skip
    line = _user_error(argv, capsys)
    assert line == (
        f"error: --output {run} already holds a finished run (model.pt, report.json): pass "
        "--resume to continue it or --overwrite to train a new one over it"
    )
    for name, raw in before.items():  # nothing was trained over it
        assert (run / name).read_bytes() == raw, name
    # A report alone (the checkpoint deleted) is a finished run's too.
    (run / "model.pt").unlink()
    assert "(report.json)" in _user_error(argv, capsys)


def test_train_without_a_terminal_logs_a_line_per_epoch(tiny_run, tmp_path):
    """stdout and stderr are pipes (no progress bars there): each epoch still says where
    training is; --overwrite trains a new run over a finished one."""
    run = _copy_run(tiny_run, tmp_path)
    config = tmp_path / "dcrnn-only.yaml"
    config.write_text(
        "model:\n  rnn_units: 8\n  num_rnn_layers: 1\ntrain:\n  threads: 1\n"
        "baselines:\n  fc_lstm: false\n  gru: false\n  tcn: false\n"
    )
    result = _cli("train", "--data", str(tiny_run["data"]), "--distances",
                  str(tiny_run["distances"]), "--config", str(config), "--epochs", "2",
                  "--output", str(run), "--overwrite")  # fmt: skip
    assert result.returncode == 0, result.stderr
    epochs = [line for line in result.stderr.splitlines() if line.startswith("dcrnn epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["dcrnn epoch 1/2", "dcrnn epoch 2/2"]
    for line in epochs:
        fields = line.split(": ", 1)[1].split(", ")
        assert fields[0].startswith("train MAE ") and float(fields[0].split()[-1]) > 0
        assert fields[1].startswith("val MAE ") and float(fields[1].split()[2]) > 0
        assert fields[-1].endswith(" s") and float(fields[-1].split()[0]) >= 0
    assert "\r" not in result.stderr  # no progress bar drawn into the pipe
    assert load_checkpoint(run / "model.pt")["training"]["epochs_run"] == 2
    assert not (run / "gru.pt").exists()  # the old run's baselines went with it


def _only_argv(tiny_run, run: Path, only: str, config: Path | None = None) -> list[str]:
    return ["train", "--data", str(tiny_run["data"]), "--distances", str(tiny_run["distances"]),
            "--config", str(config or tiny_run["config"]), "--epochs", "1", "--no-progress",
            "--output", str(run), "--only", only]  # fmt: skip


def test_only_adds_a_baseline_and_leaves_the_others_alone(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    (run / "gru.pt").unlink()
    kept = {name: (run / name).read_bytes() for name in ("model.pt", "fc_lstm.pt", "tcn.pt")}
    before = json.loads((run / "report.json").read_text())
    assert main(_only_argv(tiny_run, run, "gru")) == 0
    for name, raw in kept.items():
        assert (run / name).read_bytes() == raw, name
    gru = load_checkpoint(run / "gru.pt")
    assert gru["model_name"] == "gru" and "intervals" in gru
    report = json.loads((run / "report.json").read_text())
    assert "gru" in report["metrics"] and "gru" in report["intervals"]
    for name in ("dcrnn", "fc_lstm", "tcn", "persistence", "historical_average"):
        assert report["metrics"][name] == before["metrics"][name], name


def test_only_refuses_another_config_or_an_unknown_model(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_run["config"].read_text().replace("rnn_units: 8", "rnn_units: 16"))
    line = _user_error(_only_argv(tiny_run, run, "gru", other), capsys)
    assert "model.rnn_units = 16 but the run in" in line and "was trained with 8" in line
    line = _user_error(_only_argv(tiny_run, run, "dcrnn"), capsys)
    assert "--only dcrnn: name baselines among fc_lstm, gru, tcn" in line
    line = _user_error(_only_argv(tiny_run, tmp_path / "nowhere", "gru"), capsys)
    assert "holds no model.pt" in line
