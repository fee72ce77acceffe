"""What the serving core refuses, as its own exception types: it knows nothing of HTTP.

The service maps each type to a status code (``trafficcast.app.service.errors``); ``detail`` is the one-line
message for the client and ``field`` the request field at fault, when there is one.
"""

from __future__ import annotations


class ServingError(Exception):
    """A forecast the serving core cannot give for this input or this store state."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotEnoughData(ServingError):
    """The observation store cannot answer: nothing stored yet, or too little recent data."""


class NonFiniteForecast(ServingError):
    """The model's forecast for the given window holds NaN or infinity."""


class ServiceNotStarted(RuntimeError):
    """A part of the service used before ``Service.start()`` opened it (or one switched off):
    a caller's mistake, not the client's, so no ``ServingError`` and no 4xx."""
