"""The dashboard's 80 % band in Chromium, against a real server with the bundled (calibrated) model."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import LiveServer
from trafficcast import data
from trafficcast.app.settings import BUNDLED_RUN_DIR

CHROMIUM = Path("/usr/bin/chromium")
# docs/dashboard-band.png is retaken on request only, so that a test run leaves the tree clean:
# TRAFFICCAST_BAND_SCREENSHOT=docs/dashboard-band.png python -m pytest tests/app/test_dashboard_band.py
SCREENSHOT_ENV = "TRAFFICCAST_BAND_SCREENSHOT"


@pytest.fixture
def bundled_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        {
            "TRAFFICCAST_RUN_DIR": str(BUNDLED_RUN_DIR),
            "TRAFFICCAST_OBSERVATIONS_DB": str(tmp_path / "live.sqlite3"),
            "TRAFFICCAST_SEED_OBSERVATIONS": str(data.sample_speeds_path()),
            "TRAFFICCAST_TORCH_THREADS": "1",
        },
        tmp_path / "server.log",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_detail_chart_draws_the_80_percent_band(bundled_server: LiveServer, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    url = bundled_server.url
    stored = httpx.get(f"{url}/v1/forecast?interval=0.8&sensors=773869", timeout=30).json()
    lower, upper = stored["lower"][11][0], stored["upper"][11][0]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            page.locator('#map circle[data-sensor="773869"]').click()
            page.wait_for_selector("#chart path#forecast-band", timeout=15_000)
            d = page.get_attribute("#chart path#forecast-band", "d")
            # Upper edge from the last reading through 12 steps, then the lower edge back.
            assert d.count("L") == 2 * 13 - 1 and d.endswith("Z")
            summary = page.inner_text("#detail-summary")
            assert "60 min ahead" in summary and f"(80 %: {lower:.1f}–{upper:.1f})" in summary
            assert page.is_visible("#band-key")
            # The band's upper edge lies above its lower edge at every step (SVG y grows down).
            ys = [float(v) for v in re.findall(r"[ML][\d.]+,([\d.]+)", d)]
            top, bottom = ys[:13], ys[13:][::-1]
            assert all(t <= b for t, b in zip(top, bottom, strict=True))
            assert sum(b - t for t, b in zip(top, bottom, strict=True)) > 12
            shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard-band.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()
