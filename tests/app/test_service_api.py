"""The REST API through ``TestClient(create_app(settings))``: every endpoint, every bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from trafficcast import data
from trafficcast.app.service import create_app
from trafficcast.app.settings import Settings


@pytest.fixture(scope="module")
def week() -> data.SpeedData:
    return data.read_speeds(data.sample_speeds_path())


def window_request(week: data.SpeedData, end: int = 2016, sensors: list[str] | None = None) -> dict:
    """The 12 steps ending before row ``end`` of the bundled week, as a POST /v1/forecast body."""
    sensors = sensors or week.sensor_ids
    cols = [week.sensor_ids.index(s) for s in sensors]
    rows = slice(end - 12, end)
    values = np.where(week.mask[rows][:, cols], week.values[rows][:, cols], np.nan)
    return {
        "timestamps": [t.isoformat() for t in week.index[rows]],
        "sensors": sensors,
        "speeds": [[None if math.isnan(v) else float(v) for v in row] for row in values],
    }


@pytest.fixture
def client(service_settings: Settings):
    with TestClient(create_app(service_settings)) as c:
        yield c


def assert_error(response, status: int, *needles: str) -> dict:
    """A JSON error body whose one-line ``detail`` names each of ``needles``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert "\n" not in body["detail"]
    for needle in needles:
        assert needle in body["detail"], (needle, body)
    return body


def test_probes_model_and_sensors(client: TestClient, service_run_dir) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    model = client.get("/v1/model").json()
    report = json.loads((service_run_dir / "report.json").read_text())
    assert model["sensors"] == 207 and model["seq_len"] == 12 and model["horizon"] == 12
    assert model["freq_minutes"] == 5
    assert model["metrics"]["dcrnn"]["15min"]["mae"] == report["metrics"]["dcrnn"]["15min"]["mae"]
    # The graph-free baselines the run trained stand beside DCRNN in the model's info.
    for name in ("gru", "tcn"):
        assert model["metrics"][name] == report["metrics"][name], name
    assert len(model["version"]) == 16 and model["trained_at"]
    sensors = client.get("/v1/sensors").json()["sensors"]
    assert [s["id"] for s in sensors][:2] == ["773869", "767541"]
    # graph_sensor_locations.csv: 773869 is at 34.15497, -118.31829
    assert sensors[0]["latitude"] == pytest.approx(34.15497)
    assert sensors[0]["longitude"] == pytest.approx(-118.31829)


def test_not_ready_without_a_model(service_settings: Settings) -> None:
    # Without entering the lifespan nothing is loaded: the readiness probe and model routes say so.
    app = create_app(service_settings)
    c = TestClient(app)
    assert c.get("/healthz").status_code == 200
    assert_error(c.get("/readyz"), 503, "not ready")
    assert_error(c.get("/v1/model"), 503, "model not loaded")
    assert c.get("/readyz").headers["retry-after"] == "5"


def test_post_forecast_subset_in_any_order(client: TestClient, week) -> None:
    full = client.post("/v1/forecast", json=window_request(week)).json()
    assert full["timestamps"][0] == "2012-03-08T00:00:00"
    assert len(full["timestamps"]) == 12 and len(full["forecast"]) == 12
    assert all(len(row) == 207 for row in full["forecast"])
    values = np.array(full["forecast"])
    assert np.isfinite(values).all() and 20 < values.mean() < 80  # mph on LA freeways
    # A subset, reversed: the others count as missing, so values differ, but order follows request.
    subset = ["767541", "773869"]
    body = window_request(week, sensors=subset)
    part = client.post("/v1/forecast", json=body).json()
    assert part["sensors"] == subset
    assert np.array(part["forecast"]).shape == (12, 2)
    # 0 and null both mean missing: the same forecast either way.
    zeros = {**body, "speeds": [[0.0 if v is None else v for v in row] for row in body["speeds"]]}
    zeros["speeds"][0][0] = 0.0
    nulls = {**body, "speeds": [list(row) for row in zeros["speeds"]]}
    nulls["speeds"][0][0] = None
    a = client.post("/v1/forecast", json=zeros).json()["forecast"]
    b = client.post("/v1/forecast", json=nulls).json()["forecast"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _raw(client: TestClient, text: str | bytes, path: str = "/v1/forecast"):
    return client.post(path, content=text, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (
            lambda b: b.update(timestamps=b["timestamps"][:11], speeds=b["speeds"][:11]),
            ["timestamps", "11 given", "needs 12"],
        ),
        (lambda b: b.update(speeds=b["speeds"][:11]), ["speeds", "11 rows", "12 timestamps"]),
        (lambda b: b["speeds"][3].pop(), ["speeds[3]", "9 values", "10 sensors"]),
        (lambda b: b["sensors"].__setitem__(5, "no-such-sensor"), ["unknown", "no-such-sensor"]),
        (lambda b: b["sensors"].__setitem__(5, b["sensors"][0]), ["more than once", "773869"]),
        (
            lambda b: b["timestamps"].__setitem__(6, "2012-03-07T23:31:00"),
            ["5 minutes apart", "timestamps[6]"],
        ),
        (
            lambda b: b.update(
                timestamps=[
                    t.replace(":55:", ":50:") if t.endswith("23:55:00") else t
                    for t in b["timestamps"]
                ]
            ),
            ["5 minutes apart", "timestamps[11]"],
        ),
        (lambda b: b["speeds"][2].__setitem__(4, -3.0), ["speeds[2][4]", "greater than or equal"]),
        (lambda b: b["speeds"][2].__setitem__(4, "fast"), ["speeds[2][4]"]),
        (lambda b: b["speeds"][2].__setitem__(4, "55.0"), ["speeds[2][4]", "valid number"]),
        (lambda b: b["speeds"][2].__setitem__(4, True), ["speeds[2][4]", "valid number"]),
        (lambda b: b["timestamps"].__setitem__(0, 1331157600), ["timestamps[0]", "ISO 8601"]),
        (lambda b: b["speeds"][2].__setitem__(4, 1e300), ["speeds[2][4]", "less than or equal"]),
        (lambda b: b.update(sensors="773869"), ["sensors", "valid list"]),
        (lambda b: b.update(timestamps=["yesterday"] * 12), ["timestamps[0]", "datetime"]),
        (
            lambda b: b["timestamps"].__setitem__(0, "9999-01-01T00:00:00"),
            ["timestamps[0]", "1678..2261"],
        ),
        (
            lambda b: b["timestamps"].__setitem__(0, "0001-01-01T00:00:00+01:00"),
            ["timestamps[0]", "1678..2261"],
        ),
        (lambda b: b.pop("speeds"), ["speeds", "Field required"]),
        (lambda b: b.update(extra=1), ["extra", "not permitted"]),
        (lambda b: b.update(sensors=[]), ["sensors", "at least 1"]),
    ],
    ids=[
        "short-window",
        "rows-vs-timestamps",
        "row-length",
        "unknown-sensor",
        "duplicate-sensor",
        "uneven-timestamps",
        "duplicate-timestamp",
        "negative-speed",
        "string-speed",
        "numeric-string-speed",
        "boolean-speed",
        "unix-time",
        "huge-speed",
        "sensors-not-a-list",
        "timestamp-not-a-date",
        "timestamp-out-of-range",
        "timestamp-overflows-utc",
        "missing-field",
        "unknown-field",
        "no-sensors",
    ],
)
def test_post_forecast_bad_inputs(client: TestClient, week, mutate, needles) -> None:
    body = window_request(week, sensors=week.sensor_ids[:10])
    mutate(body)
    assert_error(client.post("/v1/forecast", json=body), 422, *needles)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(client: TestClient, week, literal: str) -> None:
    body = window_request(week, sensors=week.sensor_ids[:3])
    text = json.dumps(body).replace(json.dumps(body["speeds"][7][1]), literal, 1)
    assert literal in text
    found = assert_error(_raw(client, text), 422, "speeds[", "finite")
    assert found["field"].startswith("speeds[")


def test_body_errors(client: TestClient) -> None:
    assert_error(client.post("/v1/forecast"), 422, "body", "JSON object is required")
    assert_error(_raw(client, b""), 422, "body")
    assert_error(_raw(client, "{"), 422, "invalid JSON")
    assert_error(_raw(client, "[1, 2]"), 422, "body", "JSON object")
    assert_error(_raw(client, b"\xff\xfe"), 422, "body")
    assert_error(_raw(client, b'{"a": "\x80\x81"}'), 422, "body", "UTF-8")
    text_plain = client.post("/v1/forecast", content="{}", headers={"content-type": "text/plain"})
    assert_error(text_plain, 422, "body")


def test_body_size_limit(service_settings: Settings, week) -> None:
    settings = service_settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(settings)) as c:
        big = json.dumps(window_request(week))  # 207 sensors x 12 steps: ~30 kB
        assert len(big) > 4096
        body = assert_error(_raw(c, big), 413, "4096 bytes")
        assert body["field"] == "body"

        def chunks():  # no Content-Length: the size is counted as the body streams in
            for k in range(0, len(big), 1000):
                yield big[k : k + 1000].encode()

        streamed = c.post(
            "/v1/forecast", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_error(streamed, 413, "4096 bytes")
        small = window_request(week, sensors=week.sensor_ids[:2])
        assert c.post("/v1/forecast", json=small).status_code == 200
        assert "413" in c.get("/metrics").text


def test_request_caps(service_settings: Settings, week) -> None:
    settings = service_settings.model_copy(
        update={"max_sensors_per_request": 20, "max_timestamps_per_request": 6}
    )
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/forecast", json=window_request(week, sensors=week.sensor_ids[:21]))
        assert_error(r, 422, "sensors", "21 given", "at most 20")
        r = c.get("/v1/forecast", params={"sensors": ",".join(week.sensor_ids[:21])})
        assert_error(r, 422, "21 given", "at most 20")
        ok = window_request(week, sensors=week.sensor_ids[:20])
        r = c.post("/v1/observations", json=ok, headers={"X-API-Key": "test-key"})
        assert_error(r, 422, "timestamps", "12 given", "at most 6")


def test_get_forecast_409_then_200_then_cached(client: TestClient, week) -> None:
    body = assert_error(client.get("/v1/forecast"), 409, "no observations")
    assert "/v1/observations" in body["detail"]
    key = {"X-API-Key": "test-key"}
    # Two steps of one hour: too little of the window to forecast from.
    few = window_request(week)
    few = {**few, "timestamps": few["timestamps"][-2:], "speeds": few["speeds"][-2:]}
    assert client.post("/v1/observations", json=few, headers=key).status_code == 200
    assert_error(client.get("/v1/forecast"), 409, "too little recent data", "17%")
    assert (
        client.post("/v1/observations", json=window_request(week), headers=key).status_code == 200
    )
    first = client.get("/v1/forecast", params={"sensors": "767541,773869", "horizon": 3})
    assert first.status_code == 200, first.text
    assert first.headers["x-forecast-cache"] == "miss"
    got = first.json()
    assert got["last_observation"] == "2012-03-07T23:55:00" and got["coverage"] == 1.0
    assert got["timestamps"] == [
        "2012-03-08T00:00:00",
        "2012-03-08T00:05:00",
        "2012-03-08T00:10:00",
    ]
    # The same window through POST gives the same numbers.
    posted = client.post("/v1/forecast", json=window_request(week, sensors=week.sensor_ids)).json()
    expect = np.array(posted["forecast"])[:3, [1, 0]]
    np.testing.assert_allclose(got["forecast"], expect, atol=1e-4)
    second = client.get("/v1/forecast", params={"horizon": 12})
    assert second.headers["x-forecast-cache"] == "hit" and second.json()["cached"] is True
    metrics = client.get("/metrics").text
    assert 'trafficcast_forecast_cache_total{result="hit"} 1.0' in metrics
    assert 'trafficcast_forecast_cache_total{result="miss"} 1.0' in metrics
    # A new reading invalidates the cache.
    late = window_request(week, end=2015)
    assert client.post("/v1/observations", json=late, headers=key).status_code == 200
    assert client.get("/v1/forecast").headers["x-forecast-cache"] == "miss"


def test_get_forecast_bad_queries(client: TestClient) -> None:
    assert_error(client.get("/v1/forecast?sensors=773869,nope"), 422, "unknown", "nope")
    assert_error(client.get("/v1/forecast?sensors=773869,,767541"), 422, "empty sensor id")
    assert_error(client.get("/v1/forecast?sensors=773869,773869"), 422, "more than once")
    assert_error(client.get("/v1/forecast?horizon=13"), 422, "horizon", "13", "forecasts 12")
    assert_error(client.get("/v1/forecast?horizon=0"), 422, "horizon", "greater than or equal")
    assert_error(client.get("/v1/forecast?horizon=soon"), 422, "horizon", "integer")


def test_history(client: TestClient, week) -> None:
    assert_error(client.get("/v1/history?sensor=773869"), 409, "no observations")
    body = window_request(week)
    body["speeds"][-1][0] = None
    client.post("/v1/observations", json=body, headers={"X-API-Key": "test-key"})
    got = client.get("/v1/history", params={"sensor": "773869", "steps": 14}).json()
    assert got["timestamps"][0] == "2012-03-07T22:50:00"
    assert got["timestamps"][-1] == "2012-03-07T23:55:00"
    expect = week.values[2016 - 12 : 2016 - 1, 0]
    assert got["speeds"][:2] == [None, None] and got["speeds"][-1] is None
    np.testing.assert_allclose(got["speeds"][2:-1], expect, rtol=1e-6)
    assert_error(client.get("/v1/history?sensor=nope"), 422, "unknown", "nope")
    assert_error(client.get("/v1/history?sensor=773869&steps=99999"), 422, "steps", "at most 2016")
    assert_error(client.get("/v1/history"), 422, "sensor", "Field required")


def test_unknown_path_and_method(client: TestClient) -> None:
    assert_error(client.get("/v2/nothing"), 404, "/v2/nothing")
    r = client.delete("/v1/forecast")
    assert_error(r, 405, "DELETE")
    assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]


def test_metrics_by_route_and_status(client: TestClient, week) -> None:
    client.get("/healthz")
    client.post("/v1/forecast", json={"timestamps": []})
    client.get("/v1/sensors?x=1")
    text = client.get("/metrics").text
    assert 'trafficcast_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/v1/forecast",status="422"' in text
    assert (
        'trafficcast_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/healthz"}'
        in text
    )
    assert 'trafficcast_model_info{freq_minutes="5",horizon="12"' in text
    assert "trafficcast_ready 1.0" in text


def test_openapi_declares_status_codes_and_model_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("/healthz", "get"): {"200"},
        ("/readyz", "get"): {"200", "503"},
        ("/v1/model", "get"): {"200", "503"},
        ("/v1/sensors", "get"): {"200", "503"},
        ("/v1/forecast", "post"): {"200", "413", "422", "503"},
        ("/v1/forecast", "get"): {"200", "409", "422", "503"},
        ("/v1/observations", "post"): {"200", "401", "403", "413", "422", "503"},
        ("/v1/history", "get"): {"200", "409", "422", "503"},
        ("/metrics", "get"): {"200"},
    }
    for (path, method), codes in expected.items():
        assert set(paths[path][method]["responses"]) == codes, (path, method)
    post = schema["components"]["schemas"]["ForecastRequest"]["properties"]
    assert post["timestamps"]["minItems"] == post["timestamps"]["maxItems"] == 12
    assert len(post["sensors"]["items"]["enum"]) == 207 and post["sensors"]["uniqueItems"]
    horizon = next(p for p in paths["/v1/forecast"]["get"]["parameters"] if p["name"] == "horizon")
    assert horizon["schema"]["maximum"] == 12


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain; charset=utf-8"]
)
def test_a_json_body_under_another_content_type_is_told_the_content_type(
    client: TestClient, week, content_type: str
) -> None:
    text = json.dumps(window_request(week, sensors=week.sensor_ids[:2]))
    sent = client.post("/v1/forecast", content=text, headers={"content-type": content_type})
    body = assert_error(sent, 422, f"Content-Type: {content_type} sent", "application/json")
    assert (body["field"], body["value"]) == ("Content-Type", content_type)
    # The same body as JSON is answered: only the header was wrong.
    assert _raw(client, text).status_code == 200
    json_ld = {"content-type": "application/ld+json; charset=utf-8"}
    assert client.post("/v1/forecast", content=text, headers=json_ld).status_code == 200


def test_history_names_the_parameter_as_sent(client: TestClient) -> None:
    body = assert_error(client.get("/v1/history?sensor=999"), 422, "sensor: unknown", "999")
    assert body["field"] == "sensor"
    assert not body["detail"].startswith("sensors")


def test_favicon_is_served(client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/vnd.microsoft.icon"
    # An ICO file: reserved 0, type 1 (icon), then its image count (16 and 32 pixels).
    assert icon.content[:6] == b"\x00\x00\x01\x00\x02\x00"
    assert '<link rel="icon" href="/favicon.ico">' in client.get("/").text
    assert "/favicon.ico" not in client.get("/openapi.json").json()["paths"]
