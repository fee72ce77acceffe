"""The serving core: loaded models, hot swap from a registry, micro-batched inference, the forecast
cache and the observation store, without HTTP.

Nothing here imports FastAPI or Starlette, so the core can be used and tested on its own;
``trafficcast.app.service`` puts the REST API in front of it.
"""

from trafficcast.app.serving.cache import CachedForecast
from trafficcast.app.serving.core import Service
from trafficcast.app.serving.errors import NonFiniteForecast, NotEnoughData, ServingError
from trafficcast.app.serving.loading import LoadedModel

__all__ = [
    "CachedForecast",
    "LoadedModel",
    "NonFiniteForecast",
    "NotEnoughData",
    "Service",
    "ServingError",
]
