"""Prediction intervals through the REST API: the bundled (calibrated) model on the bundled week,
and the service tests' tiny model with its calibration taken out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from trafficcast import data
from trafficcast.app.service import create_app
from trafficcast.app.settings import BUNDLED_RUN_DIR, Settings

PLAIN_KEYS = {"model_version", "sensors", "timestamps", "forecast"}
STORED_KEYS = PLAIN_KEYS | {"last_observation", "coverage", "cached"}


@pytest.fixture(scope="module")
def week() -> data.SpeedData:
    return data.read_speeds(data.sample_speeds_path())


def window_request(week: data.SpeedData, end: int, sensors: list[str], **extra) -> dict:
    """The 12 steps ending before row ``end`` of the bundled week, as a POST body."""
    cols = [week.sensor_ids.index(s) for s in sensors]
    values = np.where(week.mask[end - 12 : end], week.values[end - 12 : end], np.nan)[:, cols]
    return {
        "timestamps": [t.isoformat() for t in week.index[end - 12 : end]],
        "sensors": sensors,
        "speeds": [[None if math.isnan(v) else float(v) for v in row] for row in values],
        **extra,
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    """The bundled model, its store seeded with the last day of the bundled week."""
    settings = Settings(
        run_dir=BUNDLED_RUN_DIR,
        observations_db=tmp_path_factory.mktemp("intervals") / "obs.sqlite3",
        seed_observations=data.sample_speeds_path(),
        torch_threads=1,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def uncalibrated(service_settings: Settings, uncalibrated_run_dir: Path):
    settings = service_settings.model_copy(update={"run_dir": uncalibrated_run_dir})
    with TestClient(create_app(settings)) as c:
        yield c


def assert_interval_error(response, *needles: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "interval", body
    for needle in ("interval", *needles):
        assert needle in body["detail"], (needle, body)


def check_band(answer: dict, level: float, rows: int, columns: int) -> tuple[np.ndarray, ...]:
    forecast, lower, upper = (np.array(answer[k]) for k in ("forecast", "lower", "upper"))
    assert answer["interval"] == level
    assert forecast.shape == lower.shape == upper.shape == (rows, columns)
    assert np.all(lower <= forecast) and np.all(forecast <= upper)
    assert np.all(lower >= 0) and np.all(upper <= 100)  # METR-LA speeds in mph
    # Not a point band: the 80 % band of the bundled model is several mph wide.
    assert 1.0 < float((upper - lower).mean()) < 30.0
    return forecast, lower, upper


def test_post_forecast_with_an_interval(client: TestClient, week) -> None:
    sensors = [week.sensor_ids[k] for k in (40, 3, 150, 7)]  # a subset, not in model order
    # 8 am on Wednesday: rush hour.
    end = int(week.index.get_indexer([np.datetime64("2012-03-07T08:00")])[0]) + 1
    plain = client.post("/v1/forecast", json=window_request(week, end, sensors))
    banded = client.post("/v1/forecast", json=window_request(week, end, sensors, interval=0.8))
    assert plain.status_code == banded.status_code == 200
    assert set(plain.json()) == PLAIN_KEYS and "null" not in plain.text
    answer = banded.json()
    assert set(answer) == PLAIN_KEYS | {"interval", "lower", "upper"}
    assert {k: answer[k] for k in PLAIN_KEYS} == plain.json()
    check_band(answer, 0.8, 12, 4)
    narrow = client.post("/v1/forecast", json=window_request(week, end, sensors, interval=0.5))
    wide = client.post("/v1/forecast", json=window_request(week, end, sensors, interval=0.9))
    _, lo50, hi50 = check_band(narrow.json(), 0.5, 12, 4)
    _, lo90, hi90 = check_band(wide.json(), 0.9, 12, 4)
    assert np.all(lo90 <= lo50) and np.all(hi50 <= hi90)
    assert float((hi90 - lo90).mean()) > 1.5 * float((hi50 - lo50).mean())
    # A sensor's band follows its place in the request, as its forecast does.
    order = [2, 0, 3, 1]
    shuffled = window_request(week, end, [sensors[k] for k in order], interval=0.8)
    again = client.post("/v1/forecast", json=shuffled).json()
    for key in ("forecast", "lower", "upper"):
        np.testing.assert_array_equal(np.array(again[key]), np.array(answer[key])[:, order])


def test_bands_follow_the_time_of_day(client: TestClient, week) -> None:
    def width(when: str) -> float:
        end = int(week.index.get_indexer([np.datetime64(when)])[0]) + 1
        a = client.post(
            "/v1/forecast", json=window_request(week, end, week.sensor_ids, interval=0.8)
        )
        return float((np.array(a.json()["upper"]) - np.array(a.json()["lower"])).mean())

    # In this week the small hours err more than the late evening (bench/README.md, intervals).
    rush, evening, night = (width(f"2012-03-07T{t}") for t in ("17:00", "21:30", "02:00"))
    assert rush > 2 * evening and rush > 1.1 * night


def test_get_forecast_with_an_interval(client: TestClient) -> None:
    plain = client.get("/v1/forecast?horizon=3")
    assert plain.status_code == 200 and set(plain.json()) == STORED_KEYS
    first = client.get("/v1/forecast?horizon=3&interval=0.8&sensors=773869,767541")
    again = client.get("/v1/forecast?horizon=3&interval=0.8&sensors=773869,767541")
    assert first.status_code == again.status_code == 200
    assert again.headers["x-forecast-cache"] == "hit" and again.content == first.content
    answer = first.json()
    assert set(answer) == STORED_KEYS | {"interval", "lower", "upper"}
    _, lo80, hi80 = check_band(answer, 0.8, 3, 2)
    whole = client.get("/v1/forecast?interval=0.8").json()
    np.testing.assert_array_equal(np.array(whole["lower"])[:3, :2], lo80)
    # The level is part of the cached answer's key: another level, another answer.
    narrow = client.get("/v1/forecast?horizon=3&interval=0.5&sensors=773869,767541").json()
    _, lo50, hi50 = check_band(narrow, 0.5, 3, 2)
    assert np.all(lo80 <= lo50) and np.all(hi50 <= hi80) and np.any(hi50 < hi80)
    # And the answer without a level is still the plain one (only "cached" may have changed).
    later = client.get("/v1/forecast?horizon=3")
    assert later.content.replace(b'"cached":true', b'"cached":false') == plain.content.replace(
        b'"cached":true', b'"cached":false'
    )
    assert b"null" not in later.content and b"interval" not in later.content


@pytest.mark.parametrize("level", [0.4, 1.0, "x", True, "0.8"])
def test_post_bad_levels_are_refused(client: TestClient, week, level) -> None:
    body = window_request(week, 2016, week.sensor_ids[:3], interval=level)
    assert_interval_error(client.post("/v1/forecast", json=body))


def test_post_nan_level_is_refused(client: TestClient, week) -> None:
    body = json.dumps(window_request(week, 2016, week.sensor_ids[:3])).rstrip("}")
    response = client.post(
        "/v1/forecast",
        content=body + ', "interval": NaN}',
        headers={"content-type": "application/json"},
    )
    assert_interval_error(response)


@pytest.mark.parametrize("level", ["0.4", "1.0", "1", "x", "nan", "inf", ""])
def test_get_bad_levels_are_refused(client: TestClient, level: str) -> None:
    assert_interval_error(client.get(f"/v1/forecast?interval={level}"))


def test_a_model_without_calibration_refuses_intervals(uncalibrated: TestClient, week) -> None:
    body = window_request(week, 2016, week.sensor_ids[:3], interval=0.8)
    assert_interval_error(uncalibrated.post("/v1/forecast", json=body), "trafficcast calibrate")
    del body["interval"]
    assert set(uncalibrated.post("/v1/forecast", json=body).json()) == PLAIN_KEYS
    assert_interval_error(uncalibrated.get("/v1/forecast?interval=0.8"), "no calibration")
    schema = uncalibrated.get("/openapi.json").json()
    assert "interval" not in schema["components"]["schemas"]["ForecastRequest"]["properties"]
    params = schema["paths"]["/v1/forecast"]["get"]["parameters"]
    assert "interval" not in {p["name"] for p in params}
    assert uncalibrated.get("/v1/model").json()["intervals"] is False


def test_openapi_documents_the_interval(client: TestClient) -> None:
    assert client.get("/v1/model").json()["intervals"] is True
    schema = client.get("/openapi.json").json()
    prop = schema["components"]["schemas"]["ForecastRequest"]["properties"]["interval"]
    number = next(s for s in prop["anyOf"] if s.get("type") == "number")
    assert number["minimum"] == 0.5 and number["exclusiveMaximum"] == 1.0
    answer = schema["components"]["schemas"]["ForecastResponse"]["properties"]
    assert {"interval", "lower", "upper"} <= set(answer)
    param = next(
        p for p in schema["paths"]["/v1/forecast"]["get"]["parameters"] if p["name"] == "interval"
    )
    number = next(s for s in param["schema"]["anyOf"] if s.get("type") == "number")
    assert number["minimum"] == 0.5 and number["exclusiveMaximum"] == 1.0


def test_the_bundled_model_ships_calibrated() -> None:
    from trafficcast.models.checkpoint import load_checkpoint

    state = load_checkpoint(Path(BUNDLED_RUN_DIR) / "model.pt")["intervals"]
    assert state["version"] == 1 and state["horizon"] == 12 and state["num_nodes"] == 207
    assert state["symmetric"] is True and state["factors"] == ["step", "sensor", "hour"]
    assert state["max_speed"] == 70.0  # the bundled week's top speed
