"""The ``Annotated`` dependencies through which routes reach the serving core."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from trafficcast.app.service.errors import ApiError, retry_after
from trafficcast.app.serving import LoadedModel, Service

API_KEY_HEADER = "X-API-Key"


def _service(request: Request) -> Service:
    return request.app.state.service


def _ready_service(request: Request) -> Service:
    service: Service = request.app.state.service
    if not service.ready:
        raise ApiError(503, f"model not loaded yet: {service.status}", headers=retry_after())
    return service


ServiceDep = Annotated[Service, Depends(_service)]
ReadyService = Annotated[Service, Depends(_ready_service)]


def _serving_model(service: ReadyService) -> LoadedModel:
    # Read once per request: a hot swap during the request leaves it on the model it began with.
    model = service.model
    if model is None:  # unloaded since the readiness check (the service is stopping)
        raise ApiError(503, f"model not loaded: {service.status}", headers=retry_after())
    return model


ServingModel = Annotated[LoadedModel, Depends(_serving_model)]
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="one of the keys in TRAFFICCAST_API_KEYS"
)


def _writer(
    service: ReadyService, key: Annotated[str | None, Security(_api_key_scheme)] = None
) -> Service:
    keys = service.settings.api_keys
    if not keys:
        raise ApiError(
            403, "writes are disabled: no API keys are configured (set TRAFFICCAST_API_KEYS)"
        )
    if not key:
        raise ApiError(
            401,
            f"missing {API_KEY_HEADER} header",
            field=API_KEY_HEADER,
            headers={"WWW-Authenticate": "ApiKey"},
        )
    given = key.encode("utf-8", "surrogateescape")
    # Compare with every key in constant time, without stopping at the first match.
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(given, candidate.encode("utf-8"))
    if not matched:
        raise ApiError(
            401,
            f"invalid {API_KEY_HEADER}",
            field=API_KEY_HEADER,
            headers={"WWW-Authenticate": "ApiKey"},
        )
    return service


WriterService = Annotated[Service, Depends(_writer)]
