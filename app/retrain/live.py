"""The champion's live accuracy, read from the service's forecast record before the job trains.

The service records every forecast it makes from its observation store and scores it as the
readings arrive (:mod:`trafficcast.app.accuracy`); the record lives in the store's database, the file
``trafficcast retrain --observations`` already reads. The job reports the champion's live MAE
beside its holdout comparison, and with ``--when-live-mae-above X`` trains only when that MAE
(over the 15-, 30- and 60-minute targets of the last day) is above ``X``: a model that still
forecasts as well as it did is kept without spending a training run.
"""

from __future__ import annotations

from typing import Any

from trafficcast.app.accuracy import live_summary, pooled_mae
from trafficcast.app.db import describe
from trafficcast.app.registry import Registry
from trafficcast.app.retrain.options import RetrainOptions

WINDOW = "24h"


def champion_live(opts: RetrainOptions, registry: Registry) -> dict[str, Any] | None:
    """The current version's live figures from ``opts.observations``: ``version``, ``window``,
    the pooled ``mae``, ``latest_observation`` and MAE/RMSE/coverage per horizon; None when
    there is no store, no current version, or no record of it."""
    pointer = registry.current()
    if opts.observations is None or pointer is None:
        return None
    summary = live_summary(opts.observations, pointer.version)
    if summary is None:
        return None
    return {
        "version": pointer.version,
        "model_version": summary["model_version"],
        "window": WINDOW,
        "mae": pooled_mae(summary, WINDOW),
        "latest_observation": summary["latest_observation"],
        "horizons": summary["windows"][WINDOW]["horizons"],
    }


def live_gate(opts: RetrainOptions, live: dict[str, Any] | None) -> str | None:
    """Why the job should not train (the champion is kept), or None to go on.

    Only with ``--when-live-mae-above``: without a live MAE to compare (no record of the champion,
    nothing scored yet) the job does not train either, since degradation is not shown."""
    limit = opts.when_live_mae_above
    if limit is None:
        return None
    if live is None or live["mae"] is None:
        return (
            f"no live MAE of the current version in {_where(opts)} to compare with "
            f"--when-live-mae-above {limit:g}; not training"
        )
    if live["mae"] > limit:
        return None
    return (
        f"the current version's live MAE over the last day, {live['mae']:.4f}, is not above "
        f"{limit:g}; not training"
    )


def _where(opts: RetrainOptions) -> str:
    """The observation store named in a message (a URL without its password)."""
    return "no observation store" if opts.observations is None else describe(opts.observations)
