"""``/docs`` and ``/redoc`` work without the internet: a headless Chromium that may reach only
127.0.0.1 opens them on a real server and finds the operations drawn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.app.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(service_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("docs")
    live = LiveServer(
        {
            "TRAFFICCAST_RUN_DIR": str(service_run_dir),
            "TRAFFICCAST_OBSERVATIONS_DB": str(tmp / "docs.sqlite3"),
            "TRAFFICCAST_SEED_OBSERVATIONS": "none",
            "TRAFFICCAST_TORCH_THREADS": "1",
        },
        tmp / "server.log",
    )
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def render_offline(url: str, selector: str) -> tuple[str, list[str], list[str]]:
    """Open ``url`` with every request to a host other than 127.0.0.1 aborted; wait for
    ``selector``. Returns its text, the aborted requests (``"type url"``) and the page's script
    errors."""
    from playwright.sync_api import Route, sync_playwright

    blocked: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(f"{route.request.resource_type} {route.request.url}")
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", only_loopback)
            page.goto(url)
            found = page.wait_for_selector(selector, timeout=30_000)
            assert found is not None
            text = found.inner_text()
        finally:
            browser.close()
    return text, blocked, errors


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_swagger_ui_draws_the_operations_offline(server: LiveServer) -> None:
    text, blocked, errors = render_offline(
        f"{server.url}/docs", '.opblock-summary-path[data-path="/v1/forecast"]'
    )
    assert "/v1/forecast" in text
    assert blocked == [] and errors == []


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_redoc_draws_the_operations_offline(server: LiveServer) -> None:
    # ReDoc draws each operation's path in a span beside its verb.
    text, blocked, errors = render_offline(f"{server.url}/redoc", 'span:text-is("/v1/forecast")')
    assert "/v1/forecast" in text
    # ReDoc's bundle links its "API docs by Redocly" logo from its site: an image the page does
    # without. Nothing it needs to work (script, style, font, data) leaves the machine.
    assert all(request.startswith("image ") for request in blocked), blocked
    assert errors == []
