"""The serving core (``trafficcast.app.serving``) on its own: no web stack imported, and used without HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast import data
from trafficcast.app.forecaster import Forecaster
from trafficcast.app.serving import NotEnoughData, Service
from trafficcast.app.settings import BUNDLED_RUN_DIR, Settings


def test_serving_core_imports_no_web_stack() -> None:
    code = textwrap.dedent(
        """
        import sys
        import trafficcast.app.serving, trafficcast.app.serving.core, trafficcast.app.serving.loading, trafficcast.app.serving.errors
        web = ("fastapi", "starlette", "uvicorn")
        print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in web)))
        print("trafficcast.app.serving.core" in sys.modules and "trafficcast.app.batching" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded, core_loaded = result.stdout.splitlines()
    assert loaded == ""
    assert core_loaded == "True"  # the probe did import the core


def core_settings(tmp_path: Path, seed: Path | None) -> Settings:
    return Settings(
        run_dir=BUNDLED_RUN_DIR,
        observations_db=tmp_path / "observations.sqlite3",
        seed_observations=seed,
        seed_days=1.0,
    )


async def started(settings: Settings, use) -> object:
    """Start a core with ``settings``, return ``await use(service)``, stop it."""
    service = Service(settings)
    await service.start()
    try:
        return await use(service)
    finally:
        await service.stop()


def test_stored_forecast_without_http_equals_the_forecaster(tmp_path: Path) -> None:
    week = data.read_speeds(data.sample_speeds_path())
    settings = core_settings(tmp_path, data.sample_speeds_path())

    async def two_reads(service: Service):
        first = await service.stored_forecast(service.model)
        second = await service.stored_forecast(service.model)
        return service.store.count(), first, second

    count, (entry, hit), (again, hit_again) = asyncio.run(started(settings, two_reads))

    # Seeded with the bundled week's last day (288 steps), missing readings left out.
    assert count == int(week.mask[-288:].sum())
    assert (hit, hit_again) == (False, True) and again is entry
    # The same window read straight from the speed file, through the Forecaster itself.
    forecaster = Forecaster.from_run(BUNDLED_RUN_DIR)
    cols = [week.sensor_ids.index(s) for s in forecaster.sensor_ids]
    rows = slice(week.num_steps - forecaster.seq_len, week.num_steps)
    window = np.where(week.mask[rows][:, cols], week.values[rows][:, cols], np.nan)
    stamps = np.asarray(week.index[rows], dtype="datetime64[ns]")
    expected = forecaster.forecast_batch(window[None].astype(np.float32), stamps[None])[0]
    assert entry.last_observation == pd.Timestamp("2012-03-07T23:55:00")
    assert entry.future[0] == pd.Timestamp("2012-03-08T00:00:00")
    assert entry.forecast.shape == expected.shape == (forecaster.horizon, 207)
    np.testing.assert_allclose(entry.forecast, expected, rtol=1e-6, atol=1e-4)
    assert entry.coverage == pytest.approx(float(np.isfinite(window).mean()))


def test_empty_store_is_not_enough_data(tmp_path: Path) -> None:
    async def read(service: Service):
        with pytest.raises(NotEnoughData) as info:
            await service.stored_forecast(service.model)
        return info.value

    error = asyncio.run(started(core_settings(tmp_path, None), read))
    assert error.detail.startswith("no observations stored yet") and error.field is None
