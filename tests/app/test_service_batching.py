"""Micro-batching: concurrent forecasts share forward passes and get their own answers."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from trafficcast import data
from trafficcast.app.batching import MicroBatcher
from trafficcast.app.forecaster import Forecaster
from trafficcast.app.service import create_app


def windows(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` different 12-step windows of the bundled week. Shapes: (B, 12, N), (B, 12)."""
    week = data.read_speeds(data.sample_speeds_path())
    starts = np.arange(count) * 37 + 100
    speeds = np.stack(
        [np.where(week.mask[s : s + 12], week.values[s : s + 12], np.nan) for s in starts]
    )
    stamps = np.stack([np.asarray(week.index[s : s + 12], dtype="datetime64[ns]") for s in starts])
    return speeds, stamps


def test_batcher_stacks_concurrent_requests(service_run_dir) -> None:
    forecaster = Forecaster.from_run(service_run_dir)
    speeds, stamps = windows(6)
    expected = forecaster.forecast_batch(speeds, stamps)  # (6, 12, N)
    sizes: list[int] = []

    async def run() -> list[np.ndarray]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(forecaster.forecast_batch, pool, 20.0, 4, on_batch=sizes.append)
            batcher.start()
            try:
                return await asyncio.gather(
                    *(batcher.submit(speeds[k], stamps[k]) for k in range(6))
                )
            finally:
                await batcher.stop()

    got = asyncio.run(run())
    assert sorted(sizes, reverse=True) == [4, 2]  # capped at max_size, the rest in a second pass
    for k in range(6):
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-4)


def test_batcher_error_reaches_every_waiter_and_it_keeps_serving() -> None:
    def fn(speeds: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        if np.isnan(speeds).all():
            raise ValueError("all missing")
        return speeds[:, :2] * 2

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(fn, pool, 5.0, 8)
            batcher.start()
            bad = np.full((3, 2), np.nan)
            results = await asyncio.gather(
                batcher.submit(bad, np.zeros(3)),
                batcher.submit(bad, np.zeros(3)),
                return_exceptions=True,
            )
            assert all(isinstance(r, ValueError) for r in results)
            ok = await batcher.submit(np.ones((3, 2)), np.zeros(3))
            np.testing.assert_array_equal(ok, np.full((2, 2), 2.0))
            await batcher.stop()

    asyncio.run(run())


@pytest.mark.parametrize("window_ms", [0.0, 30.0])
def test_concurrent_http_forecasts_match_single_ones(service_settings, window_ms) -> None:
    settings = service_settings.model_copy(update={"microbatch_window_ms": window_ms})
    speeds, stamps = windows(5)
    week = data.read_speeds(data.sample_speeds_path())
    bodies = [
        {
            "timestamps": [str(np.datetime_as_string(t, unit="s")) for t in stamps[k]],
            "sensors": week.sensor_ids,
            "speeds": [[None if math.isnan(v) else float(v) for v in row] for row in speeds[k]],
        }
        for k in range(5)
    ]
    app = create_app(settings)

    async def run() -> list[dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answers = await asyncio.gather(
                    *(client.post("/v1/forecast", json=b) for b in bodies)
                )
                metrics = (await client.get("/metrics")).text
        assert all(a.status_code == 200 for a in answers)
        return [a.json() for a in answers], metrics

    answers, metrics = asyncio.run(run())
    expected = Forecaster.from_run(settings.run_dir).forecast_batch(speeds, stamps)
    for k in range(5):
        np.testing.assert_allclose(answers[k]["forecast"], expected[k], rtol=0, atol=1e-4)
    passes = float(
        next(
            line
            for line in metrics.splitlines()
            if line.startswith("trafficcast_inference_batch_size_count")
        ).split()[-1]
    )
    assert passes == 5 if window_ms == 0 else passes < 5
