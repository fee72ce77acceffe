"""Live accuracy: the bundled model replaying the bundled week's last day scores as offline, a
restart of a real server loses no record; with the tiny model, late and re-sent readings,
retention, catch-up after a stop, the gauges, ``live_summary``, and the refusals of
``GET /v1/accuracy``."""

from __future__ import annotations

import itertools
import math
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from tests.app.conftest import LiveServer
from trafficcast import data
from trafficcast.app.accuracy import live_summary, pooled_mae
from trafficcast.app.forecaster import Forecaster
from trafficcast.app.service import create_app
from trafficcast.app.settings import BUNDLED_RUN_DIR, Settings
from trafficcast.models.metrics import MaskedMetrics

STEP_S = 300
HEADERS = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def week() -> data.SpeedData:
    return data.read_speeds(data.sample_speeds_path())


def speeds_of(week: data.SpeedData, rows: slice) -> np.ndarray:
    """The week's readings at ``rows``, NaN where missing. Shapes: ``(T, N)``."""
    return np.where(week.mask[rows], week.values[rows], np.nan)


def body(week: data.SpeedData, rows: slice, values: np.ndarray | None = None) -> dict:
    values = speeds_of(week, rows) if values is None else values
    return {
        "timestamps": [t.isoformat() for t in week.index[rows]],
        "sensors": week.sensor_ids,
        "speeds": [[None if math.isnan(v) else float(v) for v in row] for row in values],
    }


def post(client: TestClient, payload: dict) -> None:
    r = client.post("/v1/observations", json=payload, headers=HEADERS)
    assert r.status_code == 200, r.text


def settle(client: TestClient) -> None:
    """Wait for the background recorder to catch up (the core's documented way)."""
    client.portal.call(client.app.state.service.accuracy_idle)


def epoch(week: data.SpeedData, row: int) -> int:
    return int(week.index[row].value // 1_000_000_000)


def recorded(db: Path) -> list[tuple[int, np.ndarray]]:
    """``(made_from, point (H, N))`` of every recorded forecast, oldest first."""
    with sqlite3.connect(db) as conn:
        horizon, sensors = conn.execute(
            "SELECT horizon, sensor_ids FROM forecast_models"
        ).fetchone()
        rows = conn.execute("SELECT made_from, point FROM forecasts ORDER BY made_from").fetchall()
    n = len(sensors.split(","))
    return [(int(t), np.frombuffer(b, dtype="<f4").reshape(horizon, n)) for t, b in rows]


def offline_coverage(
    db: Path, truth: dict[int, np.ndarray], end: int, window_s: int, step: int
) -> float:
    """The fraction of counted targets at horizon ``step`` (targets in ``(end - window_s, end]``)
    inside the recorded bounds, from the record's own blobs."""
    with sqlite3.connect(db) as conn:
        horizon, sensors = conn.execute(
            "SELECT horizon, sensor_ids FROM forecast_models"
        ).fetchone()
        rows = conn.execute("SELECT made_from, lower, upper FROM forecasts").fetchall()
    shape = (horizon, len(sensors.split(",")))
    hits = n = 0
    for made_from, lower, upper in rows:
        t = int(made_from) + step * STEP_S
        if not (end - window_s < t <= end and t in truth):
            continue
        y = truth[t]
        lo = np.frombuffer(lower, dtype="<f4").reshape(shape)[step - 1]
        hi = np.frombuffer(upper, dtype="<f4").reshape(shape)[step - 1]
        counted = np.isfinite(y)
        hits += int(((y >= lo) & (y <= hi) & counted).sum())
        n += int(counted.sum())
    return hits / n


def offline_mae(
    forecasts: list[tuple[int, np.ndarray]],
    truth: dict[int, np.ndarray],
    end: int,
    window_s: int,
) -> dict[int, tuple[float, int]]:
    """MAE and count per horizon step of ``forecasts`` against ``truth`` (epoch seconds -> (N,)
    readings, NaN missing), targets in ``(end - window_s, end]``, through ``MaskedMetrics``."""
    horizon, n = forecasts[0][1].shape
    pred = np.stack([p for _, p in forecasts]).astype(np.float64)
    target = np.full(pred.shape, np.nan)
    for b, (made_from, _) in enumerate(forecasts):
        for h in range(horizon):
            t = made_from + (h + 1) * STEP_S
            if end - window_s < t <= end and t in truth:
                target[b, h] = truth[t]
    metrics = MaskedMetrics(horizon)
    target_t = torch.from_numpy(target)
    metrics.update(torch.from_numpy(pred), target_t.nan_to_num(0.0), torch.isfinite(target_t))
    return {s: (metrics.at(s)["mae"], int(metrics.count[s - 1])) for s in (3, 6, 12)}


def test_late_and_resent_readings_score_as_the_store_holds_them(
    service_settings: Settings, week: data.SpeedData
) -> None:
    db = service_settings.observations_db
    late = speeds_of(week, slice(20, 21))
    late[:, :100] = np.nan  # step 20 first arrives with half its sensors missing
    corrected = speeds_of(week, slice(25, 26)) + 5.0
    with TestClient(create_app(service_settings)) as c:
        post(c, body(week, slice(0, 12)))  # history: an empty store starts at its last step
        for k in range(12, 30):
            if k in (25, 26):
                continue
            rows = slice(24, 27) if k == 24 else slice(k, k + 1)  # three steps in one POST
            post(c, body(week, rows, late if k == 20 else None))
        settle(c)
        before = c.get("/v1/accuracy?window=24h").json()["windows"]["24h"]["horizons"]
        post(c, body(week, slice(20, 21)))  # the missing readings, late
        post(c, body(week, slice(25, 26), corrected))  # a re-sent, corrected step
        settle(c)
        got = c.get("/v1/accuracy").json()
    assert got["pending"] == 0 and got["forecasts"] == 19
    forecasts = recorded(db)
    # One forecast from each step that became the latest, those of one POST included.
    assert [t for t, _ in forecasts] == [epoch(week, k) for k in range(11, 30)]
    truth = {epoch(week, k): speeds_of(week, slice(k, k + 1))[0] for k in range(30)}
    truth[epoch(week, 25)] = corrected[0]
    end = epoch(week, 29)
    assert got["latest_observation"] == week.index[29].isoformat()
    for name, window_s in (("24h", 86400), ("1h", 3600)):
        expected = offline_mae(forecasts, truth, end, window_s)
        for key, step in (("15min", 3), ("30min", 6), ("60min", 12)):
            h = got["windows"][name]["horizons"][key]
            mae, count = expected[step]
            assert h["scored"] == count > 0
            assert h["mae"] == pytest.approx(mae, abs=1e-9)
            # The tiny model is calibrated (training calibrates): its bounds are recorded.
            assert h["coverage"] == pytest.approx(
                offline_coverage(db, truth, end, window_s, step), abs=1e-9
            )
    # The late and corrected readings did change the scores: the test can tell.
    first = {**truth, epoch(week, 20): late[0], epoch(week, 25): speeds_of(week, slice(25, 26))[0]}
    stale = offline_mae(forecasts, first, end, 86400)
    assert before["15min"]["mae"] == pytest.approx(stale[3][0], abs=1e-9)
    assert abs(stale[3][0] - got["windows"]["24h"]["horizons"]["15min"]["mae"]) > 1e-3
    assert before["15min"]["scored"] < got["windows"]["24h"]["horizons"]["15min"]["scored"]

    # The retraining job's view of the same record, read-only.
    summary = live_summary(db, got["model_version"])
    assert summary is not None and summary["windows"] == got["windows"]
    assert summary["forecasts"] == 19 and summary["latest_observation"] == got["latest_observation"]
    pooled = sum(expected[s][0] * expected[s][1] for s in (3, 6, 12))  # the last 1h's, above
    pooled /= sum(expected[s][1] for s in (3, 6, 12))
    assert pooled_mae(summary, "1h") == pytest.approx(pooled, abs=1e-9)
    assert live_summary(db, "0123456789abcdef") is None
    assert live_summary(db.parent / "absent.sqlite3", got["model_version"]) is None
    assert not (db.parent / "absent.sqlite3").exists()


def test_retention_prunes_old_forecasts_and_their_scores(
    service_settings: Settings, week: data.SpeedData
) -> None:
    settings = service_settings.model_copy(update={"accuracy_retention_hours": 0.5})
    with TestClient(create_app(settings)) as c:
        post(c, body(week, slice(0, 12)))
        for k in range(12, 36):
            post(c, body(week, slice(k, k + 1)))
        settle(c)
        got = c.get("/v1/accuracy?window=1h").json()
    # Forecasts from steps 11..35 were made; those more than 30 minutes before the newest went.
    kept = [epoch(week, k) for k in range(29, 36)]
    assert [t for t, _ in recorded(settings.observations_db)] == kept
    assert got["forecasts"] == 7
    with sqlite3.connect(settings.observations_db) as conn:
        scored = conn.execute(
            "SELECT DISTINCT f.made_from FROM forecast_scores s "
            "LEFT JOIN forecasts f ON f.id = s.forecast_id ORDER BY f.made_from"
        ).fetchall()
    assert [t for (t,) in scored] == kept  # no score left without its forecast
    # 15 minutes ahead, the last hour's targets with readings are steps 32..35, from 29..32.
    assert got["windows"]["1h"]["horizons"]["15min"]["forecasts"] == 4


def test_a_restart_catches_up_what_was_written_while_not_recording(
    service_settings: Settings, week: data.SpeedData, service_run_dir: Path
) -> None:
    db = service_settings.observations_db
    with TestClient(create_app(service_settings)) as c:
        post(c, body(week, slice(0, 12)))
        settle(c)
    off = service_settings.model_copy(update={"accuracy_enabled": False})
    with TestClient(create_app(off)) as c:  # as if the recorder never got to these
        for k in range(12, 16):
            post(c, body(week, slice(k, k + 1)))
        r = c.get("/v1/accuracy")
        assert r.status_code == 409 and "TRAFFICCAST_ACCURACY_ENABLED" in r.json()["detail"]
    assert [t for t, _ in recorded(db)] == [epoch(week, 11)]
    with TestClient(create_app(service_settings)) as c:
        settle(c)
        got = c.get("/v1/accuracy?window=1h").json()
    forecasts = recorded(db)
    assert [t for t, _ in forecasts] == [epoch(week, k) for k in range(11, 16)]
    # The caught-up forecast from step 12 is the Forecaster's on the window ending there.
    f = Forecaster.from_run(service_run_dir)
    window = speeds_of(week, slice(1, 13)).astype(np.float32)
    stamps = np.asarray(week.index[1:13], dtype="datetime64[ns]")
    expected = f.forecast_batch(window[None], stamps[None])[0]
    np.testing.assert_allclose(forecasts[1][1], expected, rtol=0, atol=1e-5)
    # The readings that came meanwhile were scored: 15 minutes ahead, those of steps 14 and 15
    # (from the forecasts from 11 and 12).
    truth = {epoch(week, k): speeds_of(week, slice(k, k + 1))[0] for k in range(16)}
    mae, count = offline_mae(forecasts, truth, epoch(week, 15), 3600)[3]
    h = got["windows"]["1h"]["horizons"]["15min"]
    assert (h["scored"], h["forecasts"]) == (count, 2) and h["mae"] == pytest.approx(mae, abs=1e-9)


def test_bad_version_and_window_are_refused(service_settings: Settings) -> None:
    with TestClient(create_app(service_settings)) as c:
        empty = c.get("/v1/accuracy").json()  # nothing recorded yet: figures are empty
        assert empty["serving"] is True and empty["forecasts"] == 0
        assert empty["windows"]["1h"]["horizons"]["60min"]["mae"] is None
        assert empty["latest_observation"] is None
        r = c.get("/v1/accuracy", params={"window": "2h"})
        assert r.status_code == 422 and r.json()["field"] == "window"
        r = c.get("/v1/accuracy", params={"version": "not-a-version"})
        assert r.status_code == 404 and r.json()["field"] == "version"
        assert "not-a-version" in r.json()["detail"]
        r = c.get("/v1/accuracy", params={"version": "x" * 65})
        assert r.status_code == 422 and r.json()["field"] == "version"
        only = c.get("/v1/accuracy", params={"window": "1h"}).json()
        assert list(only["windows"]) == ["1h"]
        by_hash = c.get("/v1/accuracy", params={"version": empty["model_version"]}).json()
        assert by_hash == empty
        schema = c.get("/openapi.json").json()
        op = schema["paths"]["/v1/accuracy"]["get"]
        assert {"404", "409", "422"} <= set(op["responses"])
        assert "AccuracyResponse" in schema["components"]["schemas"]
        params = {p["name"]: p for p in op["parameters"]}
        assert params["window"]["schema"]["anyOf"][0]["enum"] == ["1h", "24h"]


def test_live_gauges_follow_the_record(service_settings: Settings, week) -> None:
    with TestClient(create_app(service_settings)) as c:
        post(c, body(week, slice(0, 12)))
        for k in range(12, 16):
            post(c, body(week, slice(k, k + 1)))
        settle(c)
        got = c.get("/v1/accuracy").json()["windows"]
        text = c.get("/metrics").text
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("trafficcast_live")
    )
    mae = got["1h"]["horizons"]["15min"]["mae"]
    assert float(lines['trafficcast_live_mae{horizon="15min",window="1h"}']) == mae
    scored = got["24h"]["horizons"]["15min"]["scored"]
    assert float(lines['trafficcast_live_scored_targets{horizon="15min",window="24h"}']) == scored
    assert lines['trafficcast_live_mae{horizon="60min",window="1h"}'] == "NaN"  # none yet
    coverage = got["1h"]["horizons"]["15min"]["coverage"]
    assert 0.0 <= coverage <= 1.0
    assert (
        float(lines['trafficcast_live_interval_coverage{horizon="15min",window="1h"}']) == coverage
    )
    assert pd.notna(mae) and scored > 0


# ---- the bundled model on the bundled week ---------------------------------------------------
def offline_forecasts(week: data.SpeedData, ends: range) -> np.ndarray:
    """The bundled model's forecasts from the windows of the speed file ending at ``ends``, one
    window per forward pass as the service makes them. Shapes: ``(len(ends), H, N)``."""
    f = Forecaster.from_run(BUNDLED_RUN_DIR)
    assert f.sensor_ids == week.sensor_ids
    values = speeds_of(week, slice(None)).astype(np.float32)
    stamps = np.asarray(week.index, dtype="datetime64[ns]")
    windows = [slice(e - f.seq_len + 1, e + 1) for e in ends]
    return np.stack([f.forecast_batch(values[None, w], stamps[None, w])[0] for w in windows])


def offline_scores(
    week: data.SpeedData, ends: range, preds: np.ndarray, window_steps: int
) -> dict[int, dict[str, float]]:
    """Scores of ``preds`` (made from ``ends``) per horizon step through ``MaskedMetrics``,
    targets in the ``window_steps`` steps ending at the week's last one."""
    values = speeds_of(week, slice(None))
    last = week.num_steps - 1
    target = np.full(preds.shape, np.nan)
    for b, e in enumerate(ends):
        for h in range(preds.shape[1]):
            t = e + h + 1
            if last - window_steps < t <= last:
                target[b, h] = values[t]
    metrics = MaskedMetrics(preds.shape[1])
    target_t = torch.from_numpy(target)
    metrics.update(
        torch.from_numpy(preds.astype(np.float64)),
        target_t.nan_to_num(0.0),
        torch.isfinite(target_t),
    )
    return {s: {**metrics.at(s), "n": int(metrics.count[s - 1])} for s in (3, 6, 12)}


def seed_file(week: data.SpeedData, steps_left: int, tmp_path: Path) -> Path:
    """The week without its last ``steps_left`` steps, as a speed file to seed a store from."""
    path = tmp_path / "head.h5"
    data.write_speeds(week.slice_steps(0, week.num_steps - steps_left), path)
    return path


@pytest.mark.slow
def test_replaying_the_last_day_scores_as_offline(tmp_path: Path, week: data.SpeedData) -> None:
    day = 288
    first = week.num_steps - day
    settings = Settings(
        run_dir=BUNDLED_RUN_DIR,
        observations_db=tmp_path / "observations.sqlite3",
        seed_observations=seed_file(week, day, tmp_path),
        seed_days=1.0,
        api_keys=["test-key"],
    )
    with TestClient(create_app(settings)) as c:
        settle(c)
        k, sizes = first, itertools.cycle((1, 2, 3))  # POSTs of one, two or three steps
        while k < week.num_steps:
            n = min(next(sizes), week.num_steps - k)
            post(c, body(week, slice(k, k + n)))
            k += n
        settle(c)
        got = c.get("/v1/accuracy").json()
        again = c.get("/v1/forecast")
    # The recorder's forecast from the last step went through the forecast cache.
    assert again.headers["x-forecast-cache"] == "hit"
    ends = range(first, week.num_steps)  # each replayed step became the latest: one forecast each
    preds = offline_forecasts(week, ends)
    forecasts = recorded(settings.observations_db)
    assert [t for t, _ in forecasts] == [epoch(week, e) for e in ends]
    np.testing.assert_allclose(np.stack([p for _, p in forecasts]), preds, rtol=0, atol=1e-4)
    assert got["forecasts"] == day and got["pending"] == 0
    assert got["latest_observation"] == "2012-03-07T23:55:00"
    for name, steps in (("24h", day), ("1h", 12)):
        expected = offline_scores(week, ends, preds, steps)
        for key, step in (("15min", 3), ("30min", 6), ("60min", 12)):
            h = got["windows"][name]["horizons"][key]
            assert h["scored"] == expected[step]["n"] > 0
            assert h["forecasts"] == (day - step if name == "24h" else 12)
            assert h["mae"] == pytest.approx(expected[step]["mae"], abs=1e-6)
            assert h["rmse"] == pytest.approx(expected[step]["rmse"], abs=1e-6)
    assert got["test_metrics"]["dcrnn"]["15min"]["mae"] == 3.0014  # report.json, beside it


def replay(server: LiveServer, week: data.SpeedData, rows: range, batch: int = 1) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": "live-key"}, timeout=30) as c:
        for k in rows[::batch]:
            r = c.post("/v1/observations", json=body(week, slice(k, min(k + batch, rows.stop))))
            assert r.status_code == 200, r.text


def caught_up(server: LiveServer, forecasts: int, timeout_s: float = 60.0) -> dict:
    """``GET /v1/accuracy`` once the record holds ``forecasts`` and nothing is pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.get(f"{server.url}/v1/accuracy", timeout=30).json()
        if (got["pending"], got["forecasts"]) == (0, forecasts) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_server_restart_mid_replay_loses_no_forecast_record(
    tmp_path: Path, week: data.SpeedData
) -> None:
    steps = 24  # the week's last two hours, replayed
    first = week.num_steps - steps
    head = seed_file(week, steps, tmp_path)

    def server(db: Path, name: str) -> LiveServer:
        live = LiveServer(
            {
                "TRAFFICCAST_OBSERVATIONS_DB": str(db),
                "TRAFFICCAST_SEED_OBSERVATIONS": str(head),
                "TRAFFICCAST_API_KEYS": "live-key",
                "TRAFFICCAST_TORCH_THREADS": "1",
            },
            tmp_path / f"{name}.log",
        )
        live.wait_ready()
        return live

    interrupted = tmp_path / "interrupted.sqlite3"
    live = server(interrupted, "first")
    try:
        replay(live, week, range(first, first + 9))
        replay(live, week, range(first + 9, first + 12), batch=3)  # still being forecast from
    finally:
        live.stop()  # SIGTERM: the recorder finishes before the process ends
    made = [t for t, _ in recorded(interrupted)]
    assert made == [epoch(week, k) for k in range(first, first + 12)]
    live = server(interrupted, "second")
    try:
        replay(live, week, range(first + 12, week.num_steps))
        resumed = caught_up(live, steps)
    finally:
        live.stop()

    straight = tmp_path / "straight.sqlite3"
    live = server(straight, "straight")
    try:
        replay(live, week, range(first, week.num_steps))
        expected = caught_up(live, steps)
    finally:
        live.stop()
    assert [t for t, _ in recorded(interrupted)] == [epoch(week, k) for k in range(first, 2016)]
    for (t1, p1), (t2, p2) in zip(recorded(interrupted), recorded(straight), strict=True):
        assert t1 == t2 and np.array_equal(p1, p2)
    assert resumed["forecasts"] == expected["forecasts"] == steps
    assert resumed["windows"] == expected["windows"]
    assert resumed["windows"]["1h"]["horizons"]["60min"]["scored"] > 0


@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium at /usr/bin/chromium"
)
def test_dashboard_shows_live_beside_test_split_figures(live_server, week) -> None:
    from playwright.sync_api import sync_playwright

    # The store holds the week's last day: readings for the next half hour (the week's first,
    # moved on by a week) give forecasts to score.
    later = body(week, slice(0, 6))
    later["timestamps"] = [(t + pd.Timedelta(days=7)).isoformat() for t in week.index[0:6]]
    with httpx.Client(base_url=live_server.url, headers={"X-API-Key": "live-key"}) as c:
        for k in range(6):
            one = {**later, "timestamps": [later["timestamps"][k]], "speeds": [later["speeds"][k]]}
            assert c.post("/v1/observations", json=one, timeout=30).status_code == 200
    acc = caught_up(live_server, 6)
    assert acc["windows"]["1h"]["horizons"]["15min"]["scored"] > 0
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server.url + "/")
            page.wait_for_selector("#accuracy-panel[data-ready=true]", timeout=30_000)
            row = page.locator('#accuracy-table tr[data-horizon="15min"] td').all_inner_texts()
            assert not errors, errors
        finally:
            browser.close()
    test_mae = acc["test_metrics"]["dcrnn"]["15min"]["mae"]
    hour = acc["windows"]["1h"]["horizons"]["15min"]
    day = acc["windows"]["24h"]["horizons"]["15min"]
    assert row == [
        "15min",
        f"{test_mae:.2f}",
        f"{hour['mae']:.2f}",
        f"{day['mae']:.2f}",
        f"{day['rmse']:.2f}",
        f"{100 * day['coverage']:.1f}%",  # the bundled model is calibrated: its bounds recorded
        str(day["scored"]),
    ]


def test_record_scores_bounds_and_keeps_the_first_forecast(tmp_path: Path) -> None:
    from trafficcast.app.accuracy import ForecastRecord, ModelMeta, score_rows

    record = ForecastRecord(tmp_path / "record.sqlite3")
    meta = ModelMeta("v1", ["a", "b", "c"], horizon=3, freq_minutes=5)
    record.register_model(meta, registry_version="v0001")
    point = np.array([[10, 20, 30], [11, 21, 31], [12, 22, 32]], dtype=np.float32)
    lower, upper = point - 1.5, point + 1.5
    made_from = 1_000_200  # on the 5-minute grid
    first = record.add(meta, made_from, "2026-01-01T00:00:00Z", point, (lower, upper), 0.8)
    assert first is not None
    again = record.add(meta, made_from, "2026-01-01T00:05:00Z", point + 1, None, 0.8)
    assert again is None and record.made_between(None, None)[0].point[0, 0] == 10
    # Step 1: one target missing (NaN); one 0, a real reading (the store keeps NULL for none,
    # by the model's rule when it arrived), 20 off and outside; one 1 off (inside the bounds).
    # Steps 2 and 3: 2 off (outside), 0.5 off (inside), 3 off (outside).
    targets = np.array([[np.nan, 0.0, 31.0], [13.0, 21.5, 34.0], [14.0, 22.5, 35.0]])
    record.put_scores(score_rows(first, targets))
    summary = record.summary(record.meta("v0001"), pd.Timestamp(made_from + 900, unit="s"))
    h = summary["windows"]["1h"]["horizons"]["15min"]  # step 3 of 5-minute data
    assert h == {
        "step": 3,
        "mae": pytest.approx((2 + 0.5 + 3) / 3),
        "rmse": pytest.approx(math.sqrt((4 + 0.25 + 9) / 3)),
        "coverage": pytest.approx(1 / 3),
        "scored": 3,
        "forecasts": 1,
    }
    # A re-scored step replaces its row: the 1-off reading of step 1 corrected to 4 off.
    targets[0, 2] = 34.0
    record.put_scores(score_rows(first, targets[:1], first_step=1))
    record.close()
    with sqlite3.connect(tmp_path / "record.sqlite3") as conn:
        rows = conn.execute("SELECT step, n, abs_err, hits FROM forecast_scores ORDER BY step")
        assert rows.fetchall() == [(1, 2, 24.0, 0), (2, 3, 2 + 0.5 + 3, 1), (3, 3, 2 + 0.5 + 3, 1)]


def test_replicas_sharing_a_record_do_not_redo_each_others_forecasts(
    service_settings: Settings, week: data.SpeedData
) -> None:
    """Two services on one database (two replicas): the steps one recorded are not forecast
    again by the other when a reading reaches it."""

    def windows(client: TestClient) -> float:
        registry = client.app.state.service.metrics.registry
        return registry.get_sample_value("trafficcast_inference_batch_size_sum") or 0.0

    with (
        TestClient(create_app(service_settings)) as a,
        TestClient(create_app(service_settings)) as b,
    ):
        post(a, body(week, slice(0, 12)))
        settle(a)
        post(b, body(week, slice(12, 13)))  # B has forecast from a step of its own
        settle(b)
        for k in range(13, 20):
            post(a, body(week, slice(k, k + 1)))
        settle(a)
        assert [t for t, _ in recorded(service_settings.observations_db)] == [
            epoch(week, k) for k in range(11, 20)
        ]
        before = windows(b)
        post(b, body(week, slice(20, 21)))
        settle(b)
        # B forecast from the new step only (one window), not from the seven A recorded.
        assert windows(b) - before == 1
        assert [t for t, _ in recorded(service_settings.observations_db)] == [
            epoch(week, k) for k in range(11, 21)
        ]
