"""Flows whose zeros are real readings, and 15-minute data, through train, evaluate and serve.

The flow run's report is checked against persistence computed by hand on the same windows: its
zeros count in MAE (and would change it if dropped), and have no percentage error. The 15-minute
week (every third row of the bundled week) must report 15/30/60 minutes as steps 1/2/4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from trafficcast.app.cli import main
from trafficcast.app.pipeline import horizon_steps, trace_steps
from trafficcast.data import SpeedData, read_speeds, sample_speeds_path, split_windows, write_speeds

SEQ, HORIZON = 12, 12
FLOW_IDS = ["s1", "s2", "s3", "s4"]


def _flows() -> np.ndarray:
    """Four days of 15-minute flows: 0 vehicles every night (real zeros), a few gaps (NaN).

    Shapes: ``(384, 4)``.
    """
    steps = np.arange(4 * 96)
    hour = (steps % 96) / 4
    base = np.where((hour >= 1) & (hour < 5), 0.0, 20 + 15 * np.sin(np.pi * (hour - 5) / 19))
    flows = np.round(base[:, None] * np.array([1.0, 0.8, 1.2, 0.5]) + (steps % 3)[:, None])
    flows[(hour >= 1) & (hour < 5)] = 0.0
    flows[[40, 200, 330], [0, 2, 3]] = np.nan
    return flows


def _settings(run_dir: Path, tmp_path: Path):
    from trafficcast.app.settings import Settings

    return Settings(
        run_dir=run_dir,
        observations_db=tmp_path / "observations.sqlite3",
        api_keys=["test-key"],
        seed_observations=None,
    )


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flow run (``data.quantity: flow``) on a CSV without timestamps and a graph made from
    a distance matrix with no distance at all."""
    root = tmp_path_factory.mktemp("flow")
    table = pd.DataFrame(_flows(), columns=FLOW_IDS)
    table.to_csv(root / "flows.csv", index=False)  # NaN written as an empty cell
    (root / "dist.csv").write_text(",".join(FLOW_IDS) + "\n" + ",,,\n" * 4)
    (root / "flow.yaml").write_text(
        "data:\n  quantity: flow\nmodel:\n  rnn_units: 8\n  num_rnn_layers: 1\n"
        "baselines:\n  fc_lstm: false\n"
    )
    assert main(["graph", "--distance-matrix", str(root / "dist.csv"),
                 "--output", str(root / "adj.npz")]) == 0  # fmt: skip
    argv = ["train", "--data", str(root / "flows.csv"), "--start", "2024-01-01",
            "--freq", "15min", "--adjacency", str(root / "adj.npz"), "--config",
            str(root / "flow.yaml"), "--epochs", "1", "--no-progress", "--output",
            str(root / "run")]  # fmt: skip
    assert main(argv) == 0
    return root / "run"


def _persistence_by_hand(flows: np.ndarray, step: int) -> tuple[float, float, float]:
    """Persistence at horizon ``step`` over the test windows: its MAE and MAPE (%) with the
    zeros counted, and the MAE the same forecasts would get if zero targets were dropped."""
    observed = ~np.isnan(flows)
    errors, pct, nonzero = [], [], []
    for s in split_windows(len(flows), seq_len=SEQ, horizon=HORIZON)["test"]:
        for n in range(flows.shape[1]):
            seen = np.flatnonzero(observed[s : s + SEQ, n])
            assert len(seen), "every test window has a reading of every sensor"
            pred = flows[s + seen[-1], n]
            t = s + SEQ + step - 1
            if observed[t, n]:
                errors.append(abs(pred - flows[t, n]))
                if flows[t, n] != 0:
                    nonzero.append(errors[-1])
                    pct.append(errors[-1] / flows[t, n])
    return float(np.mean(errors)), 100 * float(np.mean(pct)), float(np.mean(nonzero))


def test_flow_zeros_count_in_the_metrics(flow_run):
    report = json.loads((flow_run / "report.json").read_text())
    assert report["data"]["quantity"] == "flow"
    assert report["data"]["unit"] == "vehicles per step"
    assert report["data"]["missing"] == "nan"
    flows = _flows()
    for key, step in (("15min", 1), ("60min", 4)):
        mae, mape, zeros_dropped = _persistence_by_hand(flows, step)
        got = report["metrics"]["persistence"][key]
        assert got["mae"] == pytest.approx(mae, abs=1e-4)
        assert got["mape_pct"] == pytest.approx(mape, abs=1e-4)
        assert abs(zeros_dropped - mae) > 0.01  # the zeros matter: the test sees them dropped
    assert report["metrics"]["dcrnn"]["15min"]["mae"] is not None


def test_flow_average_pools_every_step_with_the_zeros(flow_run):
    """``average``: persistence's errors at all 12 steps pooled, computed by hand, the real
    zeros counted in MAE and RMSE and left out of MAPE; in report.md's table of averages too."""
    report = json.loads((flow_run / "report.json").read_text())
    flows = _flows()
    observed = ~np.isnan(flows)
    errors, pct = [], []
    for s in split_windows(len(flows), seq_len=SEQ, horizon=HORIZON)["test"]:
        for n in range(flows.shape[1]):
            pred = flows[s + np.flatnonzero(observed[s : s + SEQ, n])[-1], n]
            for t in range(s + SEQ, s + SEQ + HORIZON):
                if observed[t, n]:
                    errors.append(pred - flows[t, n])
                    if flows[t, n] != 0:
                        pct.append(abs(errors[-1]) / flows[t, n])
    got = report["metrics"]["persistence"]["average"]
    assert got["mae"] == pytest.approx(np.mean(np.abs(errors)), abs=1e-4)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(errors))), abs=1e-4)
    assert got["mape_pct"] == pytest.approx(100 * np.mean(pct), abs=1e-4)
    md = (flow_run / "report.md").read_text().splitlines()
    header = md.index("| model | MAE average | RMSE average | MAPE % average |")
    n_models = len(report["metrics"])
    rows = {line.split(" | ")[0][2:]: line for line in md[header + 2 : header + 2 + n_models]}
    assert list(rows) == list(report["metrics"])
    assert rows["persistence"] == (
        f"| persistence | {got['mae']:.2f} | {got['rmse']:.2f} | {got['mape_pct']:.2f} |"
    )


def test_flow_service_says_what_it_forecasts_and_keeps_zeros(flow_run, tmp_path):
    from trafficcast.app.service import create_app

    with TestClient(create_app(_settings(flow_run, tmp_path))) as client:
        info = client.get("/v1/model").json()
        assert (info["quantity"], info["unit"], info["missing"]) == (
            "flow",
            "vehicles per step",
            "nan",
        )
        assert info["freq_minutes"] == 15
        body = {"timestamps": ["2024-01-05T03:00:00"], "sensors": ["s1", "s2"],
                "speeds": [[0, 5]]}  # fmt: skip
        r = client.post("/v1/observations", json=body, headers={"X-API-Key": "test-key"})
        assert r.status_code == 200, r.text
        history = client.get("/v1/history", params={"sensor": "s1", "steps": 1}).json()
        assert history["speeds"] == [0.0]  # a real 0, not a gap


@pytest.fixture(scope="module")
def quarter_hour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled week at 15 minutes (every third row), 12 of its sensors, trained one epoch."""
    from trafficcast.data import sample_adjacency_pkl_path
    from trafficcast.graph import load_adjacency

    root = tmp_path_factory.mktemp("quarter")
    week = read_speeds(sample_speeds_path())
    ids, adj = load_adjacency(sample_adjacency_pkl_path())
    keep = list(range(12))
    sub = week.select_sensors([ids[k] for k in keep])
    quarter = SpeedData(
        index=sub.index[::3],
        sensor_ids=sub.sensor_ids,
        values=sub.values[::3],
        mask=sub.mask[::3],
        freq_minutes=15,
        source="quarter",
    )
    write_speeds(quarter, root / "week15.h5")
    matrix = pd.DataFrame(adj[np.ix_(keep, keep)].astype(np.float64), columns=sub.sensor_ids)
    matrix.to_csv(root / "adj.csv", index=False)  # a header of ids over the dense matrix
    (root / "tiny.yaml").write_text(
        "model:\n  rnn_units: 8\n  num_rnn_layers: 1\nbaselines:\n  fc_lstm: false\n  gru: false\n  tcn: false\n"
    )
    argv = ["train", "--data", str(root / "week15.h5"), "--adjacency", str(root / "adj.csv"),
            "--config", str(root / "tiny.yaml"), "--epochs", "1", "--no-progress",
            "--output", str(root / "run")]  # fmt: skip
    assert main(argv) == 0
    return root / "run"


def test_fifteen_minute_report_uses_steps_1_2_4(quarter_hour, capsys):
    assert horizon_steps(15, 12) == {"15min": 1, "30min": 2, "60min": 4}
    assert trace_steps(12, 15) == (1, 12)  # the plot's "15 minutes ahead" is one step
    assert main(["evaluate", "--run", str(quarter_hour)]) == 0
    capsys.readouterr()
    report = json.loads((quarter_hour / "report.json").read_text())
    assert report["dataset"] == {"sensors": 12, "steps": 672, "freq_minutes": 15}
    assert (report["data"]["quantity"], report["data"]["unit"]) == ("speed", "mph")
    assert set(report["metrics"]) == {"dcrnn", "persistence", "historical_average"}
    for name, by_key in report["metrics"].items():
        by_step = report["mae_by_step"][name]
        assert len(by_step) == 12
        for key, step in (("15min", 1), ("30min", 2), ("60min", 4)):
            assert by_key[key]["mae"] == by_step[step - 1], (name, key)
    # Persistence repeats the last reading: it gets worse from 15 to 60 minutes.
    persistence = report["metrics"]["persistence"]
    assert persistence["15min"]["mae"] < persistence["60min"]["mae"]


def test_fifteen_minute_model_serves_15_minute_windows(quarter_hour, tmp_path):
    from trafficcast.app.service import create_app

    week = read_speeds(sample_speeds_path())
    with TestClient(create_app(_settings(quarter_hour, tmp_path))) as client:
        info = client.get("/v1/model").json()
        assert (info["freq_minutes"], info["quantity"], info["unit"]) == (15, "speed", "mph")
        assert 'id="quantity-line"' in client.get("/").text  # the dashboard's label
        sensors = client.get("/v1/sensors").json()["sensors"][:2]
        ids = [s["id"] for s in sensors]
        stamps = pd.date_range("2012-03-05 06:00", periods=SEQ, freq="15min")
        rows = week.select_sensors(ids).to_frame().loc[stamps]
        body = {"timestamps": [t.isoformat() for t in stamps], "sensors": ids,
                "speeds": rows.to_numpy(dtype=float).tolist()}  # fmt: skip
        r = client.post("/v1/forecast", json=body)
        assert r.status_code == 200, r.text
        future = pd.to_datetime(r.json()["timestamps"])
        assert future[0] == stamps[-1] + pd.Timedelta(minutes=15)
        assert (np.diff(future.as_unit("ns").asi8) == pd.Timedelta(minutes=15).value).all()
        assert len(r.json()["forecast"]) == HORIZON

        five = pd.date_range("2012-03-05 06:00", periods=SEQ, freq="5min")
        body["timestamps"] = [t.isoformat() for t in five]
        r = client.post("/v1/forecast", json=body)
        assert r.status_code == 422
        assert "15 minutes apart" in r.text


def test_the_config_names_the_quantities_and_missing_rules_of_the_data_layer() -> None:
    # models/ may not import data/, so its config spells the names out; they must stay equal.
    from typing import get_args

    from trafficcast.data.speeds import MISSING_RULES, QUANTITIES
    from trafficcast.models.config import DataConfig

    fields = DataConfig.model_fields
    assert get_args(fields["quantity"].annotation) == QUANTITIES
    assert get_args(fields["missing"].annotation)[0] is not None
    assert get_args(get_args(fields["missing"].annotation)[0]) == MISSING_RULES
