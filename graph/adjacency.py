"""The DCRNN sensor graph: a thresholded Gaussian kernel of road distances.

Li et al., "Diffusion Convolutional Recurrent Neural Network: Data-Driven Traffic Forecasting",
ICLR 2018, Sec. 4.1:

.. math::

    W_{ij} = \\exp\\left(-\\frac{\\operatorname{dist}(v_i, v_j)^2}{\\sigma^2}\\right)
    \\text{ if } \\exp(\\cdot) \\ge \\kappa \\text{, else } 0

as computed by DCRNN's ``scripts/gen_adj_mx.py``: distances are directed (row = from, column
= to), pairs without a distance are ``+inf`` (weight 0) and sigma is the standard deviation of all
finite distances among the listed sensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trafficcast.graph.errors import GraphInputError, GraphWarning

__all__ = [
    "adjacency_from_distance_matrix",
    "build_adjacency",
    "build_adjacency_with_sigma",
    "distance_matrix",
]

_NAMED_ISOLATED = 5  # how many isolated sensors a warning names before "..."


def _check_sensor_ids(sensor_ids: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, sensor in enumerate(sensor_ids):
        key = str(sensor)
        if key in index:
            raise GraphInputError(f"sensor ids: duplicate sensor id '{key}'")
        index[key] = i
    if not index:
        raise GraphInputError("sensor ids: no sensor ids given")
    return index


def _check_columns(distances: pd.DataFrame) -> None:
    missing = [c for c in ("from", "to", "cost") if c not in distances.columns]
    if missing:
        found = ", ".join(map(str, distances.columns))
        raise GraphInputError(f"distances: missing column '{missing[0]}' (found: {found})")


def distance_matrix(distances: pd.DataFrame, sensor_ids: Sequence[str]) -> np.ndarray:
    """Directed road distances between the listed sensors, in their order.

    Rows of ``distances`` whose ``from`` or ``to`` is not in ``sensor_ids`` are ignored. A pair
    listed twice keeps its last row (what DCRNN's loop does).

    Shapes:
        distances: rows ``from`` (str), ``to`` (str), ``cost`` (a distance, in any unit).
        returns ``(N, N)`` float64, ``d[i, j]`` = distance from sensor i to sensor j, ``+inf``
        where the file has no row.

    Raises:
        GraphInputError: duplicate or no sensor ids, missing columns.
    """
    index = _check_sensor_ids(sensor_ids)
    _check_columns(distances)
    num_nodes = len(index)
    dist = np.full((num_nodes, num_nodes), np.inf, dtype=np.float64)
    rows = distances.loc[:, ["from", "to", "cost"]]
    # Map ids through a dict (not pandas categories) so "0123" never meets an int 123.
    i = rows["from"].astype(str).map(index)
    j = rows["to"].astype(str).map(index)
    used = i.notna() & j.notna()
    used_rows = pd.DataFrame(
        {"i": i[used].astype(np.int64), "j": j[used].astype(np.int64), "cost": rows["cost"][used]}
    )
    # Numpy leaves the winner of repeated fancy-index assignments unspecified; DCRNN's loop keeps
    # the last row, so drop earlier duplicates explicitly.
    used_rows = used_rows.drop_duplicates(subset=["i", "j"], keep="last")
    dist[used_rows["i"].to_numpy(), used_rows["j"].to_numpy()] = used_rows["cost"].to_numpy(
        dtype=np.float64
    )
    return dist


def _check_threshold(threshold: float) -> float:
    try:
        kappa = float(threshold)
    except (TypeError, ValueError):
        kappa = math.nan
    if not 0.0 <= kappa <= 1.0:  # NaN fails this too
        raise GraphInputError(f"threshold {threshold!r} is outside [0, 1]")
    return kappa


def _build(
    distances: pd.DataFrame, sensor_ids: Sequence[str], threshold: float
) -> tuple[np.ndarray, float]:
    """Shared body of the two public builders; warnings point at their caller (stacklevel 4)."""
    kappa = _check_threshold(threshold)
    index = _check_sensor_ids(sensor_ids)
    _check_columns(distances)
    listed = set(distances["from"].astype(str)) | set(distances["to"].astype(str))
    if not listed & set(index):
        raise GraphInputError(
            f"no sensor in common between {len(index)} sensor ids and the distances file"
        )
    return _kernel(distance_matrix(distances, sensor_ids), sensor_ids, kappa)


def _kernel(dist: np.ndarray, sensor_ids: Sequence[str], kappa: float) -> tuple[np.ndarray, float]:
    """The thresholded Gaussian kernel of a distance matrix (``+inf``: no road) and its sigma;
    warns about sensors left isolated. Shapes: ``dist (N, N)`` -> ``(N, N)`` float32."""
    index = _check_sensor_ids(sensor_ids)
    finite = np.isfinite(dist)
    # A sensor with no finite distance to or from another listed sensor ends up isolated; a
    # self-distance row (PEMS-BAY lists i,i,0 for every sensor) does not connect it to anything.
    off_diagonal = finite & ~np.eye(len(index), dtype=bool)
    connected = off_diagonal.any(axis=0) | off_diagonal.any(axis=1)
    if not connected.all():
        isolated = [str(sensor_ids[int(k)]) for k in np.flatnonzero(~connected)]
        named = ", ".join(isolated[:_NAMED_ISOLATED]) + (
            ", ..." if len(isolated) > _NAMED_ISOLATED else ""
        )
        warnings.warn(
            f"{len(isolated)} of {len(index)} sensors have no road distance to another listed "
            f"sensor and will be isolated nodes: {named}",
            GraphWarning,
            stacklevel=4,
        )
    if not finite.any():
        # No distance at all: a graph without edges, on which DCRNN is a per-sensor GRU.
        return np.zeros(dist.shape, dtype=np.float32), math.nan

    # Population std (numpy's default, ddof=0) over the flattened finite entries, self-distances
    # included, as gen_adj_mx.py. float64 here; DCRNN used float32, which gives the same matrix
    # up to float32 rounding.
    sigma = float(dist[finite].std())
    adj = np.zeros_like(dist)
    if sigma > 0 and math.isfinite(sigma):
        adj[finite] = np.exp(-np.square(dist[finite] / sigma))
    else:
        # All finite distances are equal: the kernel exp(-(d/sigma)^2) is 0/0 there. Every
        # finite pair is then as close as any other, so it gets the largest weight, 1.
        adj[finite] = 1.0
    adj[adj < kappa] = 0.0
    return adj.astype(np.float32), sigma


def build_adjacency(
    distances: pd.DataFrame, sensor_ids: Sequence[str], threshold: float = 0.1
) -> np.ndarray:
    """The DCRNN adjacency: ``W = exp(-(d / sigma)^2)``, weights below ``threshold`` set to 0.

    Exactly as DCRNN's ``gen_adj_mx.py``: ``d`` is ``+inf`` everywhere except for rows of
    ``distances`` whose ``from`` and ``to`` are both in ``sensor_ids`` (``d[i(from), j(to)] =
    cost``; direction kept); ``sigma`` is the population standard deviation of the finite entries
    of ``d`` (self-distances included when the file lists them); absent pairs weigh 0. With
    ``threshold=0.1`` this reproduces DCRNN's published PEMS-BAY matrix (325 sensors, 2,694
    nonzeros) from ``distances_bay_2017.csv``.

    If all finite distances are equal (``sigma == 0``) there is no scale to divide by; instead of
    dividing by zero every finite pair gets weight 1 (and absent pairs stay 0).

    Shapes:
        distances: rows ``from`` (str), ``to`` (str), ``cost`` (a distance, in any unit).
        returns ``(N, N)`` float32 with ``N == len(sensor_ids)``, in the order of
        ``sensor_ids``; ``adj[i, j]`` = weight of the road from sensor i to sensor j.

    Warns:
        GraphWarning: some sensors have no distance to or from any other listed sensor (named).

    Raises:
        GraphInputError: ``threshold`` outside ``[0, 1]``; duplicate or no sensor ids; no sensor
            of ``sensor_ids`` appears in ``distances``.
    """
    adj, _ = _build(distances, sensor_ids, threshold)
    return adj


def build_adjacency_with_sigma(
    distances: pd.DataFrame, sensor_ids: Sequence[str], threshold: float = 0.1
) -> tuple[np.ndarray, float]:
    """:func:`build_adjacency`, also returning the kernel width sigma it used, in the unit of the
    costs (the kernel depends on ``d / sigma`` only, so the unit need not be known).

    Shapes:
        returns ``(N, N)`` float32 and a float.
    """
    return _build(distances, sensor_ids, threshold)


def adjacency_from_distance_matrix(
    dist: np.ndarray, sensor_ids: Sequence[str], threshold: float = 0.1
) -> tuple[np.ndarray, float]:
    """The DCRNN adjacency of a dense distance matrix, as :func:`build_adjacency` builds it from
    ``from,to,cost`` rows: ``W = exp(-(d / sigma)^2)`` over the finite distances, sigma their
    population standard deviation, weights below ``threshold`` set to 0; also returns sigma
    (in the distances' unit; NaN when there is no finite distance, and the matrix is then all zeros).

    Shapes:
        dist: ``(N, N)`` metres, ``+inf`` where there is no road, in the order of
        ``sensor_ids``; returns ``(N, N)`` float32 and a float.

    Warns:
        GraphWarning: some sensors have no distance to or from any other sensor (named).

    Raises:
        GraphInputError: ``threshold`` outside ``[0, 1]``; duplicate ids; a matrix that is not
            N×N for the N ids, or holds a negative or NaN distance.
    """
    kappa = _check_threshold(threshold)
    dist = np.asarray(dist, dtype=np.float64)
    n = len(sensor_ids)
    if dist.shape != (n, n):
        raise GraphInputError(
            f"distance matrix has shape {dist.shape}, expected ({n}, {n}) for {n} sensor ids"
        )
    if np.isnan(dist).any() or (dist < 0).any():
        raise GraphInputError("distance matrix: distances must be >= 0 (+inf for no road)")
    return _kernel(dist, sensor_ids, kappa)
