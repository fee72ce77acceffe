"""Error types and handlers: every error is JSON ``{"detail", "field", "value", "errors"}``.

``detail`` is one line naming the problem; request validation errors are reformatted to say which
field; the serving core's own exceptions (``trafficcast.app.serving.errors``) become the status codes below.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from trafficcast.app.db import UNAVAILABLE, reason
from trafficcast.app.schemas import ErrorBody, FieldError
from trafficcast.app.serving.errors import NonFiniteForecast, NotEnoughData, ServingError

log = logging.getLogger("trafficcast.service")
E = TypeVar("E", bound=Exception)

# Seconds a client is asked to wait by every 503: while the model loads, and when the database
# can't be reached (the pool reconnects on the first request after it returns).
RETRY_AFTER_S = 5

# The serving core's refusals as HTTP: not enough stored data is a conflict with the store's
# state (409); a forecast that is not finite is about the input the client sent (422).
SERVING_STATUS: dict[type[ServingError], int] = {NotEnoughData: 409, NonFiniteForecast: 422}

_DESCRIPTIONS = {
    401: "missing or invalid X-API-Key",
    403: "writes are disabled: no API keys configured",
    409: "not enough stored data to answer",
    413: "request body over the size limit",
    422: "invalid request; the body names the field and the value",
    500: "unexpected server error (a bug), as JSON",
    503: "no model loaded yet (starting or training), or the database is unreachable; "
    "retry after Retry-After seconds",
}


class ApiError(Exception):
    """A client mistake: becomes ``status`` with an :class:`ErrorBody` naming the field."""

    def __init__(
        self,
        status: int,
        detail: str,
        field: str | None = None,
        value: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.value = value
        self.headers = headers


def retry_after() -> dict[str, str]:
    """The headers of a 503: ``Retry-After`` in seconds."""
    return {"Retry-After": str(RETRY_AFTER_S)}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route for these error status codes."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def _short(value: Any, limit: int = 80) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_response(
    status: int,
    detail: str,
    field: str | None = None,
    value: Any = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body: ``detail`` on one line, ``value`` shortened to 80 characters."""
    body = ErrorBody(
        detail=" ".join(detail.split()), field=field, value=_short(value), errors=errors
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    """``("body", "speeds", 3, 2)`` -> ``speeds[3][2]``; ``("query", "horizon")`` -> ``horizon``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path", "cookie"):
        where = parts.pop(0)
        if not parts:
            return "body" if where == "body" else where
    name = ""
    for p in parts:
        if isinstance(p, int):
            name += f"[{p}]"
        else:
            name += ("." if name else "") + str(p)
    return name


def _describe_validation(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    fields: list[FieldError] = []
    for err in errors[:20]:
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "malformed")
            fields.append(FieldError(field="body", message=f"invalid JSON ({reason})"))
            continue
        if kind == "missing" and loc == ("body",):
            fields.append(FieldError(field="body", message="a JSON object is required"))
            continue
        message = str(err.get("msg", "invalid")).rstrip(".")
        if kind in ("model_attributes_type", "dict_type") and loc == ("body",):
            message = "the body must be a JSON object"
        fields.append(FieldError(field=_field_name(loc), message=message))
    first = errors[0] if errors else {}
    head = fields[0] if fields else FieldError(field="body", message="invalid request")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    value = None
    if first.get("type") not in ("missing", "json_invalid") and first.get("loc") != ("body",):
        value = first.get("input")
    return error_response(
        422, f"{head.field}: {head.message}{more}", field=head.field, value=value, errors=fields
    )


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # FastAPI >= 0.137 keeps an included router as one entry of app.routes; its routes are on
        # the router it wraps. Their paths lack the include's prefix: the service uses none.
        router = getattr(route, "original_router", None)
        if router is None:
            yield route
        else:
            yield from _leaf_routes(router.routes)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in _leaf_routes(app.routes):
        regex = getattr(route, "path_regex", None)
        route_methods = getattr(route, "methods", None)
        if regex is not None and regex.match(path) and route_methods:
            methods |= set(route_methods)
    return sorted(methods)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.detail, exc.field, exc.value, headers=exc.headers)


async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    status = next(code for kind, code in SERVING_STATUS.items() if isinstance(exc, kind))
    return error_response(status, exc.detail, exc.field)


def _is_json(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type, parameters (``; charset=...``) aside."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    sent = request.headers.get("content-type")
    if (
        sent is not None
        and not _is_json(sent)
        and any(tuple(err.get("loc", ()))[:1] == ("body",) for err in exc.errors())
    ):
        # FastAPI reads only a JSON content type's body as JSON: a JSON object sent as a form
        # would otherwise be told it is not an object. The header is what is wrong: say so.
        return error_response(
            422,
            f"Content-Type: {sent} sent, but the body must be JSON (Content-Type: "
            "application/json)",
            field="Content-Type",
            value=sent,
        )
    return _describe_validation(exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):
        # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): the same 422 as
        # for any other body that is not JSON.
        return error_response(
            422, "body: invalid JSON (cannot be decoded as UTF-8 text)", field="body"
        )
    if exc.status_code == 404:
        detail = f"no such path: {request.url.path}"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; list every method.
        allowed = _allowed_methods(request.app, request.url.path)
        headers["Allow"] = ", ".join(allowed)
        detail = (
            f"method {request.method} not allowed on {request.url.path} "
            f"(allowed: {', '.join(allowed)})"
        )
    return error_response(exc.status_code, detail, headers=headers)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Nothing was written (the transaction did not commit), so the client may simply retry: the
    # pool reconnects by itself once the database is back.
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, reason(exc))
    return error_response(
        503,
        "the database is unavailable; nothing was written, retry later",
        headers=retry_after(),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def _handle(
    app: FastAPI, kind: type[E], handler: Callable[[Request, E], Awaitable[JSONResponse]]
) -> None:
    # Starlette calls a handler only with exceptions of the kind it was added for, but types
    # every handler as taking any Exception: this is where the two meet.
    app.add_exception_handler(kind, cast(Callable[[Request, Exception], Any], handler))


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with the JSON error body."""
    _handle(app, ApiError, _api_error)
    for refusal in SERVING_STATUS:
        _handle(app, refusal, _serving_error)
    for outage in UNAVAILABLE:
        _handle(app, outage, _database_unavailable)
    _handle(app, RequestValidationError, _validation_error)
    _handle(app, StarletteHTTPException, _http_error)
    _handle(app, Exception, _unexpected)
