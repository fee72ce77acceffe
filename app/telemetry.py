"""Prometheus metrics of one app, in a registry of its own (tests build many apps per process).

No web framework here: the serving core counts with these metrics, and the service's
``MetricsMiddleware`` (``trafficcast.app.service.middleware``) records the HTTP requests in them.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """The service's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "trafficcast_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "trafficcast_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forecasts = Counter(
            "trafficcast_forecasts_served",
            "Forecasts answered, by endpoint (post: client history, get: stored observations)",
            ["endpoint"],
            registry=r,
        )
        self.cache = Counter(
            "trafficcast_forecast_cache",
            "GET /v1/forecast cache lookups by result",
            ["result"],
            registry=r,
        )
        self.batch_size = Histogram(
            "trafficcast_inference_batch_size",
            "Windows per forward pass (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.inference = Histogram(
            "trafficcast_inference_seconds",
            "Time of one forward pass",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.observations = Counter(
            "trafficcast_observations_ingested",
            "Readings written to the observation store",
            registry=r,
        )
        self.database_up = Gauge(
            "trafficcast_database_up",
            "1 when the last readiness check reached the database, else 0",
            registry=r,
        )
        self.stale_forecasts = Counter(
            "trafficcast_forecasts_stale",
            "GET /v1/forecast answered from the forecast last made while the database was "
            "unreachable",
            registry=r,
        )
        self.model_info = Info("trafficcast_model", "The serving model", registry=r)
        self.ready = Gauge("trafficcast_ready", "1 once a model is loaded and serving", registry=r)
        self.swaps = Counter(
            "trafficcast_model_swaps",
            "Hot swaps to a newly promoted registry version, by result",
            ["result"],
            registry=r,
        )
        self._add_live_gauges()
        for result in ("ok", "failed"):
            self.swaps.labels(result=result)
        for result in ("hit", "miss"):
            self.cache.labels(result=result)
        for endpoint in ("post", "get"):
            self.forecasts.labels(endpoint=endpoint)

    def _add_live_gauges(self) -> None:
        """The live-accuracy gauges (``set_live``), one series per horizon and window."""
        r = self.registry
        live = ("horizon", "window")
        self.live_mae = Gauge(
            "trafficcast_live_mae",
            "Live MAE of the serving model's recorded forecasts against later readings, by "
            "horizon and window (targets in the window before the latest observation)",
            live,
            registry=r,
        )
        self.live_rmse = Gauge(
            "trafficcast_live_rmse", "Live RMSE, as trafficcast_live_mae", live, registry=r
        )
        self.live_coverage = Gauge(
            "trafficcast_live_interval_coverage",
            "Fraction of scored targets inside the recorded bounds (NaN without bounds)",
            live,
            registry=r,
        )
        self.live_scored = Gauge(
            "trafficcast_live_scored_targets",
            "Targets (sensor readings) the live figures are computed over",
            live,
            registry=r,
        )

    def set_live(self, windows: dict[str, Any]) -> None:
        """Set the live-accuracy gauges from a summary's windows (``trafficcast.app.accuracy.summarize``);
        NaN where nothing was scored."""
        for window, figures in windows.items():
            for horizon, h in figures["horizons"].items():
                labels = {"horizon": horizon, "window": window}
                for gauge, value in (
                    (self.live_mae, h["mae"]),
                    (self.live_rmse, h["rmse"]),
                    (self.live_coverage, h["coverage"]),
                ):
                    gauge.labels(**labels).set(math.nan if value is None else value)
                self.live_scored.labels(**labels).set(h["scored"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
