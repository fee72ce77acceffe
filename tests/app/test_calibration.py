"""Calibrating a run (``trafficcast calibrate``) and scoring bands, on real runs of the bundled week."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trafficcast import data
from trafficcast.app.cli import main
from trafficcast.app.forecaster import Forecaster
from trafficcast.app.pipeline import load_run
from trafficcast.app.pipeline.calibrate import (
    interval_metrics,
    persistence,
    plot_bands,
    split_residuals,
)
from trafficcast.models.checkpoint import load_checkpoint, save_checkpoint


def run_calibrate(argv: list[str]) -> int:
    """``trafficcast calibrate`` as the command line runs it."""
    return main(["calibrate", *argv])


@pytest.fixture(scope="module")
def calibrated_run(uncalibrated_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("calibrate") / "run"
    shutil.copytree(uncalibrated_run_dir, run_dir)
    assert run_calibrate(["--run", str(run_dir)]) == 0
    return run_dir


def equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_calibrate_adds_intervals_and_changes_nothing_else(
    uncalibrated_run_dir: Path, calibrated_run: Path
) -> None:
    before = load_checkpoint(uncalibrated_run_dir / "model.pt")
    after = load_checkpoint(calibrated_run / "model.pt")
    assert "intervals" not in before and set(after) == set(before) | {"intervals"}
    assert all(equal(before[k], after[k]) for k in before)
    week = data.read_speeds(data.sample_speeds_path())
    window = np.where(week.mask[:12], week.values[:12], np.nan)
    old, new = Forecaster(before), Forecaster(after)
    assert not old.intervals and new.intervals
    np.testing.assert_array_equal(
        old.forecast(week.index[:12], window)[0], new.forecast(week.index[:12], window)[0]
    )


def test_calibrate_prints_the_validation_coverage(
    service_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(service_run_dir, run_dir)
    assert run_calibrate(["--run", str(run_dir), "--data", str(data.sample_speeds_path())]) == 0
    out = capsys.readouterr().out.splitlines()
    # The quantiles come from the validation windows, so there the coverage is the level.
    assert out[1].startswith("80% band, validation coverage: 15min 8")
    # The run trained the graph-free baselines too (their defaults): each gets its own bands.
    assert out[-1] == (
        f"wrote the intervals into {run_dir}/model.pt and {run_dir}/gru.pt and {run_dir}/tcn.pt"
    )
    # Calibrating again replaces the calibration (here with the full week's validation split).
    first = load_checkpoint(run_dir / "model.pt")["intervals"]
    run_calibrate(["--run", str(run_dir)])
    second = load_checkpoint(run_dir / "model.pt")["intervals"]
    assert first["calibration_count"] != second["calibration_count"]


def test_calibrate_names_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_calibrate(["--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such run directory" in err[0]


def test_bands_of_a_calibrated_run_on_its_test_split(calibrated_run: Path, tmp_path: Path) -> None:
    run = load_run(calibrated_run)
    test = split_residuals(run, "test")
    f = Forecaster.from_run(calibrated_run)
    stamps = np.asarray(test.target_times)[:, :1] - np.timedelta64(5, "m") * np.arange(12)[::-1]
    lower, upper = f.bands(test.history, stamps, test.forecast, 0.8)
    assert lower.shape == upper.shape == test.forecast.shape
    assert np.all(lower <= test.forecast + 1e-4) and np.all(test.forecast - 1e-4 <= upper)
    metrics = interval_metrics(test.y, test.y_mask, lower, upper, test.target_times)
    assert set(metrics) == {"15min", "30min", "60min"}
    # A tiny model on one day: still a band that covers most of what happened.
    assert 0.6 < metrics["15min"]["overall"]["coverage"] < 0.97
    plot_bands(tmp_path / "band.png", test, lower, upper, np.array([0, 1]), f.sensor_ids, 3, 0.8)
    assert (tmp_path / "band.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interval_metrics_by_horizon_and_period() -> None:
    # Two windows of 12 steps and 2 sensors; targets at 08:00+ (rush) and 02:00+ (night).
    first = np.array(["2012-03-07T08:00", "2012-03-07T02:00"], dtype="datetime64[ns]")
    times = first[:, None] + np.arange(12) * np.timedelta64(5, "m")  # (2, 12)
    y = np.full((2, 12, 2), 50.0)
    lower = np.full_like(y, 45.0)
    upper = np.full_like(y, 55.0)
    upper[0, :, 0] = 49.0  # misses the target
    upper[1, :, 0] = 53.0
    mask = np.ones_like(y, dtype=bool)
    y[1, :, 1], mask[1, :, 1] = 0.0, False  # missing (by the data's rule, in the mask): nowhere
    m = interval_metrics(y, mask, lower, upper, times)
    at15 = m["15min"]
    assert at15["overall"] == {
        "coverage": pytest.approx(2 / 3, abs=1e-4),
        "width": 7.3333,
        "count": 3,
    }
    assert at15["rush"] == {"coverage": 0.5, "width": 7.0, "count": 2}
    assert at15["night"] == {"coverage": 1.0, "width": 8.0, "count": 1}
    # At 60 minutes the first window's target is 08:55, still rush hour; none are missing there.
    assert m["60min"]["rush"]["count"] == 2
    none = interval_metrics(y, np.zeros_like(mask), lower, upper, times)
    assert none["30min"]["night"] == {"coverage": None, "width": None, "count": 0}


def test_persistence_repeats_the_last_reading() -> None:
    history = np.array([[[50.0, np.nan, np.nan], [52.0, 40.0, np.nan], [np.nan, 41.0, np.nan]]])
    forecast = persistence(history, horizon=2, fallback=55.0)  # (B=1, T=3, N=3) -> (1, 2, 3)
    np.testing.assert_array_equal(forecast, [[[52.0, 41.0, 55.0], [52.0, 41.0, 55.0]]])


def test_training_calibrates_and_the_report_scores_the_bands(service_run_dir: Path) -> None:
    """``trafficcast train`` ships its model calibrated, and the report it writes (as every
    ``evaluate``) gives the bands' coverage and width per level, horizon and period."""
    import json

    assert "intervals" in load_checkpoint(service_run_dir / "model.pt")
    report = json.loads((service_run_dir / "report.json").read_text())
    levels = report["intervals"]["dcrnn"]
    assert set(levels) == {"50", "80", "95"}
    widths = []
    for level in ("50", "80", "95"):
        at60 = levels[level]["60min"]
        assert set(at60) == {"overall", "rush", "night"}
        assert 0.0 < at60["overall"]["coverage"] <= 1.0 and at60["overall"]["count"] > 0
        widths.append(at60["overall"]["width"])
    assert widths == sorted(widths) and widths[0] > 0  # wider bands for higher levels
    md = (service_run_dir / "report.md").read_text()
    assert "Prediction intervals on the test split" in md and "| dcrnn | 80 % | 60 min |" in md
    assert (service_run_dir / "intervals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_writes_the_band_beside_the_forecast(
    service_run_dir: Path, uncalibrated_run_dir: Path, tmp_path: Path, capsys
) -> None:
    import pandas as pd

    args = ["--data", str(data.sample_speeds_path()), "--at", "2012-03-01T20:00:00"]
    plain, banded, narrow = tmp_path / "p.csv", tmp_path / "b.csv", tmp_path / "n.csv"
    assert main(["predict", "--run", str(service_run_dir), *args, "--output", str(plain)]) == 0
    for out, level in ((banded, "0.9"), (narrow, "0.5")):
        argv = ["predict", "--run", str(service_run_dir), *args, "--output", str(out)]
        assert main([*argv, "--interval", level]) == 0
    p, b, n = (pd.read_csv(f, index_col=0) for f in (plain, banded, narrow))
    ids = list(p.columns)
    assert list(b.columns) == ids + [f"{s}_lower" for s in ids] + [f"{s}_upper" for s in ids]
    pd.testing.assert_frame_equal(b[ids], p)  # the forecast columns as without --interval
    lower, upper = b[[f"{s}_lower" for s in ids]].to_numpy(), b[[f"{s}_upper" for s in ids]]
    assert np.all(lower <= p.to_numpy() + 1e-4) and np.all(p.to_numpy() <= upper.to_numpy() + 1e-4)
    # The 50 % band lies inside the 90 % one, and is narrower somewhere.
    n_lower, n_upper = n[[f"{s}_lower" for s in ids]].to_numpy(), n[[f"{s}_upper" for s in ids]]
    assert np.all(lower <= n_lower + 1e-4) and np.all(n_upper.to_numpy() <= upper.to_numpy() + 1e-4)
    assert np.any(n_upper.to_numpy() - n_lower < upper.to_numpy() - lower - 1e-3)
    capsys.readouterr()
    for run, level, needle in (
        (uncalibrated_run_dir, "0.8", "no calibration"),
        (service_run_dir, "1.0", "below 1"),
        (service_run_dir, "0.4", "at least 0.5"),
    ):
        argv = ["predict", "--run", str(run), *args, "--output", str(tmp_path / "x.csv")]
        assert main([*argv, "--interval", level]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --interval") and needle in err[0]


def strip_intervals(run_dir: Path) -> dict[str, dict]:
    """Remove the calibration from the run's checkpoints; returns the removed states by file."""
    removed = {}
    for name in ("model.pt", "fc_lstm.pt"):
        payload = load_checkpoint(run_dir / name)
        removed[name] = payload.pop("intervals")
        save_checkpoint(run_dir / name, payload)
    return removed


def test_calibrate_stores_each_models_intervals_in_its_checkpoint(
    fc_lstm_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(fc_lstm_run_dir, run_dir)
    trained = strip_intervals(run_dir)  # what training's calibration wrote
    before = {name: load_checkpoint(run_dir / name) for name in trained}
    capsys.readouterr()
    assert run_calibrate(["--run", str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in out[:6]] == ["(dcrnn)"] * 3 + ["(fc_lstm)"] * 3
    assert out[4].startswith("80% band, validation coverage: 15min ")
    assert out[-1] == f"wrote the intervals into {run_dir}/model.pt and {run_dir}/fc_lstm.pt"
    states = {}
    for name, old in before.items():
        new = load_checkpoint(run_dir / name)
        assert set(new) == set(old) | {"intervals"} and all(equal(old[k], new[k]) for k in old)
        states[name] = new["intervals"]
        assert equal(states[name], trained[name])  # deterministic: as training calibrated it
    dcrnn, fc_lstm = states["model.pt"], states["fc_lstm.pt"]
    # One difficulty model, fitted once; the quantiles are each model's own.
    for key in ("intercept", "coef", "variability_edges", "max_speed"):
        assert equal(dcrnn[key], fc_lstm[key])
    assert dcrnn["quantiles"] != fc_lstm["quantiles"]


def test_calibrate_writes_nothing_when_a_checkpoint_changed_meanwhile(
    fc_lstm_run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trafficcast.app.pipeline.calibrate as calibration
    from trafficcast.models.errors import CheckpointError

    run_dir = tmp_path / "run"
    shutil.copytree(fc_lstm_run_dir, run_dir)
    strip_intervals(run_dir)
    model_bytes = (run_dir / "model.pt").read_bytes()
    real = calibration.split_residuals

    def retrained_meanwhile(run, split, model="dcrnn"):
        # The FC-LSTM's checkpoint is rewritten (as a retraining would) during the calibration.
        payload = load_checkpoint(run_dir / "fc_lstm.pt")
        save_checkpoint(run_dir / "fc_lstm.pt", {**payload, "trained_at": "later"})
        return real(run, split, model)

    monkeypatch.setattr(calibration, "split_residuals", retrained_meanwhile)
    with pytest.raises(CheckpointError, match="fc_lstm.pt changed while"):
        calibration.calibrate_run(run_dir, log=lambda message: None)
    assert (run_dir / "model.pt").read_bytes() == model_bytes
    assert load_checkpoint(run_dir / "fc_lstm.pt")["trained_at"] == "later"


def test_the_report_gives_bands_for_every_model_and_baseline(fc_lstm_run_dir: Path) -> None:
    import json

    report = json.loads((fc_lstm_run_dir / "report.json").read_text())
    names = ["dcrnn", "persistence", "historical_average", "fc_lstm"]
    assert list(report["intervals"]) == names == list(report["metrics"])
    for name in names:
        for key in ("15min", "60min"):
            widths = []
            for level in ("50", "80", "95"):
                overall = report["intervals"][name][level][key]["overall"]
                assert 0.0 < overall["coverage"] <= 1.0 and overall["count"] > 0
                widths.append(overall["width"])
            assert widths == sorted(widths) and widths[0] > 0 and widths[0] < widths[2]
    # Calibrated on the validation split, each model's 95 % band covers most test targets.
    assert all(report["intervals"][n]["95"]["15min"]["overall"]["coverage"] > 0.8 for n in names)
    md = (fc_lstm_run_dir / "report.md").read_text()
    for name in names:
        assert f"| {name} | 80 % | 60 min |" in md
