"""A real uvicorn server on 127.0.0.1: readiness, a forecast, and the dashboard in Chromium."""

from __future__ import annotations

import math
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from trafficcast import data

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshot is retaken on request only, so that a test run leaves the tree clean:
# TRAFFICCAST_SCREENSHOT=docs/dashboard.png python -m pytest tests/app/test_service_live.py
SCREENSHOT_ENV = "TRAFFICCAST_SCREENSHOT"


def test_live_server_answers(live_server) -> None:
    url = live_server.url
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    week = data.read_speeds(data.sample_speeds_path())
    rows = slice(week.num_steps - 12, week.num_steps)
    values = np.where(week.mask[rows], week.values[rows], np.nan)
    body = {
        "timestamps": [t.isoformat() for t in week.index[rows]],
        "sensors": week.sensor_ids,
        "speeds": [[None if math.isnan(v) else float(v) for v in row] for row in values],
    }
    posted = httpx.post(f"{url}/v1/forecast", json=body, timeout=30)
    assert posted.status_code == 200, posted.text
    # The seeded store ends with the same hour: the stored forecast is the same.
    stored = httpx.get(f"{url}/v1/forecast", timeout=30).json()
    assert stored["last_observation"] == "2012-03-07T23:55:00"
    np.testing.assert_allclose(stored["forecast"], posted.json()["forecast"], atol=1e-4)
    assert httpx.get(f"{url}/").headers["content-type"].startswith("text/html")
    assert "trafficcast_forecasts_served_total" in httpx.get(f"{url}/metrics").text


def band(speed: float) -> str:
    """The dashboard's colour for a speed (app/static/app.js, BANDS)."""
    for limit, colour in ((25, "#c92a2a"), (40, "#f76707"), (55, "#fcc419")):
        if speed < limit:
            return colour
    return "#2b8a3e"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_dashboard_draws_sensors_and_chart(live_server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server.url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            circles = page.locator("#map circle.sensor")
            assert circles.count() == 207
            # Each sensor coloured by its 60-minute forecast (the default), in the legend's bands.
            fills = dict(
                circles.evaluate_all(
                    "cs => cs.map(c => [c.dataset.sensor, c.getAttribute('fill')])"
                )
            )
            stored = httpx.get(f"{live_server.url}/v1/forecast?horizon=12").json()
            expected = {
                s: band(v) for s, v in zip(stored["sensors"], stored["forecast"][11], strict=True)
            }
            assert fills == expected
            page.locator('#map circle[data-sensor="773869"]').click()
            page.wait_for_selector("#chart path#forecast-line", timeout=15_000)
            history = page.get_attribute("#chart path#history-line", "d")
            forecast = page.get_attribute("#chart path#forecast-line", "d")
            assert history.count("L") >= 30  # 36 five-minute steps of history
            assert forecast.count("L") == 12  # from the last reading through 12 steps ahead
            assert "sensor 773869" in page.inner_text("#detail-title")
            page.select_option("#horizon", "15")
            page.wait_for_function(
                "document.getElementById('detail-summary').textContent.includes('15 min ahead')",
                timeout=15_000,
            )
            step3 = {
                s: band(v) for s, v in zip(stored["sensors"], stored["forecast"][2], strict=True)
            }
            assert (
                page.get_attribute('#map circle[data-sensor="717447"]', "fill") == step3["717447"]
            )
            shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()
    # Nothing fetched from anywhere but the service itself.
    assert requests and all(u.startswith(live_server.url) for u in requests), requests
