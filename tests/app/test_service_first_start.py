"""First start without the bundled checkpoint: the service trains it, 503 until ready, then serves."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

import trafficcast.app.serving.core
import trafficcast.app.settings
from trafficcast.app.service import create_app
from trafficcast.app.settings import Settings

TINY_CONFIG = """\
model: {rnn_units: 4, num_rnn_layers: 1, max_diffusion_step: 1}
train: {epochs: 1}
baselines: {fc_lstm: false}
"""


def test_trains_the_bundled_run_on_first_start(tmp_path, monkeypatch) -> None:
    # Point "the bundled run" at an empty directory in tmp_path (never at the repository's own).
    bundled = tmp_path / "bundled" / "metr-la-week"
    config = tmp_path / "bundled" / "metr-la-week.yaml"
    config.parent.mkdir()
    config.write_text(TINY_CONFIG)
    monkeypatch.setattr(trafficcast.app.settings, "BUNDLED_RUN_DIR", bundled)
    monkeypatch.setattr(trafficcast.app.serving.core, "BUNDLED_CONFIG", config)
    settings = Settings(run_dir=bundled, observations_db=tmp_path / "obs.sqlite3")
    assert settings.serves_bundled_run and settings.seed_observations == "auto"
    with TestClient(create_app(settings)) as c:
        first = c.get("/readyz")
        assert first.status_code == 503 and "training the bundled model" in first.json()["detail"]
        assert c.get("/healthz").status_code == 200
        deadline = time.monotonic() + 300
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.5)
        assert (bundled / "model.pt").exists() and (bundled / "report.json").exists()
        # Serving the bundled run seeds the store with the bundled week: forecasts at once.
        got = c.get("/v1/forecast", params={"horizon": 1})
        assert got.status_code == 200 and got.json()["last_observation"] == "2012-03-07T23:55:00"
        assert c.get("/v1/model").json()["metrics"]["dcrnn"]["60min"]["mae"] > 0
