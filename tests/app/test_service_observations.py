"""POST /v1/observations: API keys, the SQLite store (WAL, idempotent, survives a restart)."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from trafficcast.app.service import create_app
from trafficcast.app.settings import Settings

SENSORS = ["773869", "767541", "767542"]


def batch(start: str = "2012-03-07T23:00:00", steps: int = 12, base: float = 60.0) -> dict:
    stamps = pd.date_range(start, periods=steps, freq="5min")
    return {
        "timestamps": [t.isoformat() for t in stamps],
        "sensors": SENSORS,
        "speeds": [[base + t, base - t, None] for t in range(steps)],
    }


def post(client: TestClient, body: dict, key: str | None = "test-key"):
    headers = {} if key is None else {"X-API-Key": key}
    return client.post("/v1/observations", json=body, headers=headers)


def rows(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT sensor_id, ts, speed FROM readings ORDER BY ts, sensor_id"
        ).fetchall()


def test_api_keys(service_settings: Settings) -> None:
    with TestClient(create_app(service_settings)) as c:
        missing = post(c, batch(), key=None)
        assert missing.status_code == 401 and "missing X-API-Key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "ApiKey"
        wrong = post(c, batch(), key="test-kez")
        assert wrong.status_code == 401 and "invalid X-API-Key" in wrong.json()["detail"]
        assert post(c, batch(), key="").status_code == 401
        right = post(c, batch())
        assert right.status_code == 200, right.text
        assert right.json() == {
            "written": 36,
            "timestamps": 12,
            "sensors": 3,
            "latest_timestamp": "2012-03-07T23:55:00",
        }
        # Reads stay open without a key.
        assert c.get("/v1/history?sensor=773869&steps=2").status_code == 200
    assert len(rows(service_settings.observations_db)) == 36


def test_several_keys_accepted(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"api_keys": ["first", "second"]})
    with TestClient(create_app(settings)) as c:
        assert post(c, batch(), key="second").status_code == 200
        assert post(c, batch(), key="first").status_code == 200
        assert post(c, batch(), key="third").status_code == 401


def test_no_keys_configured_disables_writes(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"api_keys": []})
    with TestClient(create_app(settings)) as c:
        r = post(c, batch(), key="anything")
        assert r.status_code == 403
        assert "writes are disabled" in r.json()["detail"]
        assert "TRAFFICCAST_API_KEYS" in r.json()["detail"]
        assert c.get("/v1/model").status_code == 200


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFICCAST_API_KEYS", "alpha, beta")
    monkeypatch.setenv("TRAFFICCAST_MICROBATCH_WINDOW_MS", "0")
    settings = Settings()
    assert settings.api_keys == ["alpha", "beta"]
    assert settings.microbatch_window_ms == 0.0
    monkeypatch.setenv("TRAFFICCAST_API_KEYS", '["gamma"]')
    assert Settings().api_keys == ["gamma"]


def test_store_survives_restart_and_resend_is_idempotent(service_settings: Settings) -> None:
    db = service_settings.observations_db
    with TestClient(create_app(service_settings)) as c:
        assert post(c, batch()).status_code == 200
    first = rows(db)
    assert len(first) == 36
    assert first[0] == ("767541", int(pd.Timestamp("2012-03-07T23:00").timestamp()), 60.0)
    assert ("767542", first[0][1], None) in first  # a null reading is stored as missing
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # A new app on the same file: the readings are there, and a re-send changes nothing.
    with TestClient(create_app(service_settings)) as c:
        hist = c.get("/v1/history", params={"sensor": "767541", "steps": 12}).json()
        assert hist["speeds"] == [60.0 - t for t in range(12)]
        assert post(c, batch()).status_code == 200
        assert rows(db) == first
        # A corrected reading replaces the stored one rather than adding a row.
        fix = batch(start="2012-03-07T23:55:00", steps=1, base=42.0)
        assert post(c, fix).status_code == 200
        after = rows(db)
        assert len(after) == 36
        assert ("773869", int(pd.Timestamp("2012-03-07T23:55").timestamp()), 42.0) in after


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ({**batch(), "sensors": ["773869", "767541", "nope"]}, ["unknown", "nope"]),
        (batch(start="2012-03-07T23:01:00"), ["timestamps[0]", "5-minute grid"]),
        (batch(start="2199-01-01T00:00:00"), ["timestamps[0]", "in the future"]),
        (
            {**batch(steps=2), "timestamps": ["2012-03-07T23:00:00"] * 2},
            ["more than once", "2012-03-07T23:00:00"],
        ),
        ({**batch(steps=2), "speeds": [[1.0, 2.0, 3.0]]}, ["speeds", "1 rows", "2 timestamps"]),
        ({**batch(steps=1), "speeds": [[1.0, 2.0]]}, ["speeds[0]", "2 values", "3 sensors"]),
        ({**batch(steps=1), "speeds": [[1.0, -2.0, None]]}, ["speeds[0][1]"]),
        ({"timestamps": [], "sensors": SENSORS, "speeds": []}, ["timestamps", "at least 1"]),
    ],
    ids=[
        "unknown-sensor",
        "off-grid",
        "far-future",
        "duplicate-timestamp",
        "rows",
        "row-length",
        "negative",
        "empty",
    ],
)
def test_bad_observations_are_refused(service_settings: Settings, body, needles) -> None:
    with TestClient(create_app(service_settings)) as c:
        r = post(c, body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        for needle in needles:
            assert needle in detail, (needle, detail)
    assert rows(service_settings.observations_db) == []  # nothing half-written


def test_timezone_offsets_are_converted_to_utc(service_settings: Settings) -> None:
    body = batch(steps=1)
    body["timestamps"] = ["2012-03-07T15:00:00-08:00"]
    with TestClient(create_app(service_settings)) as c:
        assert post(c, body).json()["latest_timestamp"] == "2012-03-07T23:00:00"


def test_seeding_fills_an_empty_store_once(service_settings: Settings) -> None:
    from trafficcast import data

    settings = service_settings.model_copy(
        update={"seed_observations": data.sample_speeds_path(), "seed_days": 0.5}
    )
    with TestClient(create_app(settings)) as c:
        got = c.get("/v1/forecast", params={"horizon": 1})
        assert got.status_code == 200 and got.json()["last_observation"] == "2012-03-07T23:55:00"
        assert "trafficcast_observations_ingested_total 29808.0" in c.get("/metrics").text
    assert len(rows(settings.observations_db)) == 144 * 207
    with TestClient(create_app(settings)) as c:  # not empty any more: not seeded again
        assert "trafficcast_observations_ingested_total 0.0" in c.get("/metrics").text
