"""The OpenAPI document: FastAPI's, plus the loaded model's own limits once a model is loaded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from trafficcast.app.serving import LoadedModel, Service


def constrain_schema(schema: dict[str, Any], service: Service, model: LoadedModel) -> None:
    """Write the loaded model's own limits into the OpenAPI document.

    Its sensor ids, ``seq_len``, ``horizon`` and the request caps are known only once the model is
    loaded, so clients and fuzzers read them from the schema rather than discover them by 422s.
    A model without calibrated intervals does not offer the ``interval`` field and parameter.
    """
    f, s = model.forecaster, service.settings
    ids = list(f.sensor_ids)
    max_sensors = min(len(ids), s.max_sensors_per_request)
    comps = schema["components"]["schemas"]
    sensor_list = {
        "type": "array",
        "items": {"type": "string", "enum": ids},
        "minItems": 1,
        "maxItems": max_sensors,
        "uniqueItems": True,
    }
    for name, rows in (
        ("ForecastRequest", (f.seq_len, f.seq_len)),
        ("ObservationBatch", (1, s.max_timestamps_per_request)),
    ):
        props = comps[name]["properties"]
        props["sensors"] = {**props["sensors"], **sensor_list}
        for key in ("timestamps", "speeds"):
            props[key]["minItems"], props[key]["maxItems"] = rows
        props["speeds"]["items"]["minItems"] = 1
        props["speeds"]["items"]["maxItems"] = max_sensors
    if not f.intervals:
        del comps["ForecastRequest"]["properties"]["interval"]
        get = schema["paths"]["/v1/forecast"]["get"]
        get["parameters"] = [p for p in get.get("parameters", []) if p["name"] != "interval"]
    for path, method, params in (
        ("/v1/forecast", "get", {"sensors", "horizon"}),
        ("/v1/history", "get", {"sensor", "steps"}),
    ):
        for param in schema["paths"][path][method].get("parameters", []):
            if param["name"] not in params:
                continue
            if param["name"] == "horizon":
                param["schema"] = {"type": "integer", "minimum": 1, "maximum": f.horizon}
            elif param["name"] == "steps":
                param["schema"] = {**param["schema"], "maximum": s.max_history_steps}
            elif param["name"] == "sensor":
                param["schema"] = {"type": "string", "enum": ids}
            else:  # OpenAPI's comma-separated array: style form, explode false
                param["schema"] = sensor_list
                param["style"] = "form"
                param["explode"] = False


def openapi_builder(app: FastAPI, service: Service) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: the document with the serving model's limits, built once per model (so
    again after a hot swap); without a model, FastAPI's document, not cached."""
    schema_model: list[LoadedModel | None] = [None]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None and schema_model[0] is service.model:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=(
                "Forecasts of traffic speed from a DCRNN checkpoint. Errors are JSON "
                "`{detail, field, value}`; request bodies are capped at "
                f"{service.settings.max_body_bytes} bytes."
            ),
            routes=app.routes,
        )
        model = service.model
        if model is None:
            return schema  # not cached: the model's own constraints are added once it loads
        constrain_schema(schema, service, model)
        app.openapi_schema, schema_model[0] = schema, model
        return schema

    return openapi
