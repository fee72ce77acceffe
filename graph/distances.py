"""Road distances between sensors, for users who have a road network but no distances file.

DCRNN needs ``from,to,cost`` road distances between sensors (its authors computed them with a
routing engine and never published how); this module derives them from a plain road table:
directed shortest paths over road segments, sensors snapped to road nodes. For a rough graph
without roads, :func:`straight_line_distances` gives great-circle distances instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path
from scipy.spatial import cKDTree

from trafficcast.graph.errors import GraphInputError, GraphWarning

__all__ = [
    "EARTH_RADIUS_M",
    "haversine_m",
    "read_road_nodes",
    "read_roads",
    "read_sensor_points",
    "road_distances",
    "straight_line_distances",
]

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG); 1 degree of latitude = 111.195 km
DEFAULT_MAX_SNAP_M = 500.0

_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "f", ""})


def haversine_m(
    lat1: np.ndarray | float,
    lon1: np.ndarray | float,
    lat2: np.ndarray | float,
    lon2: np.ndarray | float,
) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasts).

    Shapes:
        inputs broadcast together; the result has their broadcast shape (float64).
    """
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi = phi2 - phi1
    dlmb = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    # clip: rounding can push h a hair above 1 for antipodal points, and arcsin would give NaN.
    angle: np.ndarray = np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return 2 * EARTH_RADIUS_M * angle


def _read_table(path: str | os.PathLike[str], required: Iterable[str]) -> pd.DataFrame:
    """A headed CSV as stripped strings, indexed by file line number, blank lines dropped."""
    source = os.fspath(path)
    try:
        raw: pd.DataFrame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,  # keep blank lines so that row k is line k + 2
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as exc:
        raise GraphInputError(f"{source}: empty file") from exc
    except pd.errors.ParserError as exc:
        raise GraphInputError(
            f"{source}: not a readable CSV ({' '.join(str(exc).split())})"
        ) from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    raw = raw.fillna("").apply(lambda column: column.str.strip())
    raw.index = pd.RangeIndex(2, len(raw) + 2)  # line 1 is the header
    raw = raw[(raw != "").any(axis=1)]
    for column in required:
        if column not in raw.columns:
            found = ", ".join(c for c in raw.columns if c)
            raise GraphInputError(f"{source}: missing column '{column}' (found: {found})")
    if raw.empty:
        raise GraphInputError(f"{source}: header only, no rows")
    return raw


def _require_ids(raw: pd.DataFrame, column: str, source: str) -> None:
    empty = raw.index[raw[column] == ""]
    if len(empty):
        raise GraphInputError(f"{source}: line {empty[0]}: empty '{column}'")


def _first_duplicate(raw: pd.DataFrame, column: str, source: str) -> None:
    duplicated = raw[column].duplicated()
    if duplicated.any():
        line = raw.index[duplicated.to_numpy()][0]
        raise GraphInputError(
            f"{source}: line {line}: duplicate {column} '{str(raw.at[line, column])}'"
        )


def _parse_float(
    raw: pd.DataFrame,
    column: str,
    source: str,
    low: float,
    high: float,
    allow_empty: bool = False,
    low_open: bool = False,
) -> np.ndarray:
    """Parse a numeric column; bad values name their line. Empty cells are NaN if allowed."""
    text = raw[column]
    values = np.array(pd.to_numeric(text, errors="coerce"), dtype=np.float64)  # writable copy
    empty = (text == "").to_numpy()
    above_low = values > low if low_open else values >= low
    ok = np.isfinite(values) & above_low & (values <= high)
    if allow_empty:
        ok |= empty
    if not ok.all():
        line = raw.index[~ok][0]
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        limits = bound if np.isinf(high) else f"in [{low:g}, {high:g}]"
        raise GraphInputError(
            f"{source}: line {line}: {column} {text.at[line]!r} is not a finite number {limits}"
        )
    values[empty] = np.nan
    return values


def read_roads(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read road segments: CSV header ``from_node,to_node,length_m[,oneway]``.

    ``oneway`` (default false) accepts 1/0, true/false, yes/no (any case); a one-way segment runs
    from ``from_node`` to ``to_node`` only. Lengths are positive finite metres. Extra columns
    are ignored.

    Returns:
        DataFrame ``from_node`` (str), ``to_node`` (str), ``length_m`` (float64), ``oneway``
        (bool).

    Raises:
        GraphInputError: empty file, missing column, empty node id, bad length or oneway value
            (file, line and column named).
    """
    source = os.fspath(path)
    raw = _read_table(path, ("from_node", "to_node", "length_m"))
    _require_ids(raw, "from_node", source)
    _require_ids(raw, "to_node", source)
    length_m = _parse_float(raw, "length_m", source, 0.0, np.inf, low_open=True)
    if "oneway" in raw.columns:
        flag = raw["oneway"].str.lower()
        unknown = ~flag.isin(_TRUE | _FALSE)
        if unknown.any():
            line = raw.index[unknown.to_numpy()][0]
            raise GraphInputError(
                f"{source}: line {line}: oneway {raw.at[line, 'oneway']!r} is not one of "
                "1/0, true/false, yes/no"
            )
        oneway = flag.isin(_TRUE).to_numpy(dtype=bool)
    else:
        oneway = np.zeros(len(raw), dtype=bool)
    frame: pd.DataFrame = pd.DataFrame(
        {
            "from_node": raw["from_node"].to_numpy(),
            "to_node": raw["to_node"].to_numpy(),
            "length_m": length_m,
            "oneway": oneway,
        }
    ).astype({"from_node": str, "to_node": str})
    return frame


def read_road_nodes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read road node coordinates: CSV header ``node_id,latitude,longitude`` (degrees).

    Needed to snap sensors given by coordinates onto the road network.

    Returns:
        DataFrame ``node_id`` (str), ``latitude``, ``longitude`` (float64).

    Raises:
        GraphInputError: missing column, empty or duplicate node id, coordinates out of range.
    """
    source = os.fspath(path)
    raw = _read_table(path, ("node_id", "latitude", "longitude"))
    _require_ids(raw, "node_id", source)
    _first_duplicate(raw, "node_id", source)
    frame: pd.DataFrame = pd.DataFrame(
        {
            "node_id": raw["node_id"].to_numpy(),
            "latitude": _parse_float(raw, "latitude", source, -90.0, 90.0),
            "longitude": _parse_float(raw, "longitude", source, -180.0, 180.0),
        }
    ).astype({"node_id": str})
    return frame


def read_sensor_points(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read where the sensors are: CSV header ``sensor_id`` plus ``node_id`` and/or
    ``latitude,longitude``.

    Per sensor, a non-empty ``node_id`` wins (the sensor sits on that road node); otherwise its
    coordinates are used for snapping. Extra columns are ignored, so DCRNN's
    ``graph_sensor_locations.csv`` (``index,sensor_id,latitude,longitude``) reads as is.

    Returns:
        DataFrame ``sensor_id`` (str), ``node_id`` (str, missing where not given), ``latitude``,
        ``longitude`` (float64, NaN where not given), in file order.

    Raises:
        GraphInputError: no ``sensor_id`` column, neither ``node_id`` nor both coordinate
            columns, a duplicate or empty sensor id, a sensor with neither a node nor valid
            coordinates, coordinates out of range.
    """
    source = os.fspath(path)
    raw = _read_table(path, ("sensor_id",))
    has_node = "node_id" in raw.columns
    has_coords = "latitude" in raw.columns and "longitude" in raw.columns
    if not has_node and not has_coords:
        found = ", ".join(raw.columns)
        raise GraphInputError(
            f"{source}: missing column 'node_id' or 'latitude,longitude' (found: {found})"
        )
    _require_ids(raw, "sensor_id", source)
    _first_duplicate(raw, "sensor_id", source)
    node = raw["node_id"] if has_node else pd.Series("", index=raw.index)
    if has_coords:
        latitude = _parse_float(raw, "latitude", source, -90.0, 90.0, allow_empty=True)
        longitude = _parse_float(raw, "longitude", source, -180.0, 180.0, allow_empty=True)
    else:
        latitude = longitude = np.full(len(raw), np.nan)
    located = (node != "").to_numpy() | (np.isfinite(latitude) & np.isfinite(longitude))
    if not located.all():
        line = raw.index[~located][0]
        raise GraphInputError(
            f"{source}: line {line}: sensor '{str(raw.at[line, 'sensor_id'])}' has neither a node_id "
            "nor latitude and longitude"
        )
    node_id = pd.Series(node.to_numpy(), dtype=str).replace("", np.nan)
    frame: pd.DataFrame = pd.DataFrame(
        {
            "sensor_id": pd.Series(raw["sensor_id"].to_numpy(), dtype=str),
            "node_id": node_id,
            "latitude": latitude,
            "longitude": longitude,
        }
    )
    return frame


def _unit_vectors(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Points on the unit sphere: nearest by chord is nearest by great circle.

    Shapes:
        returns ``(len(latitude), 3)``.
    """
    phi, lmb = np.radians(latitude), np.radians(longitude)
    return np.column_stack([np.cos(phi) * np.cos(lmb), np.cos(phi) * np.sin(lmb), np.sin(phi)])


def _snap_sensors(
    sensors: pd.DataFrame,
    node_index: dict[str, int],
    nodes: pd.DataFrame | None,
    max_snap_m: float,
) -> np.ndarray:
    """The graph node index of each sensor: its ``node_id``, else the nearest node (haversine).

    Shapes:
        returns ``(num_sensors,)`` int64.
    """
    num_sensors = len(sensors)
    snapped = np.full(num_sensors, -1, dtype=np.int64)
    node_ids = sensors["node_id"]
    given = node_ids.notna().to_numpy()
    for k in np.flatnonzero(given):
        node = str(node_ids.iloc[k])
        if node not in node_index:
            raise GraphInputError(
                f"sensor '{sensors['sensor_id'].iloc[k]}': node_id '{node}' is not a node of "
                "the road network"
            )
        snapped[k] = node_index[node]
    to_snap = np.flatnonzero(~given)
    if len(to_snap) == 0:
        return snapped
    if nodes is None:
        raise GraphInputError(
            f"{len(to_snap)} sensors are given by latitude/longitude (first: "
            f"'{sensors['sensor_id'].iloc[to_snap[0]]}'); snapping them needs a road nodes file "
            "node_id,latitude,longitude (--nodes)"
        )
    located = nodes[nodes["node_id"].astype(str).isin(node_index)]
    if located.empty:
        raise GraphInputError("no node of the nodes file is a node of the road network")
    lat = sensors["latitude"].to_numpy(dtype=np.float64)[to_snap]
    lon = sensors["longitude"].to_numpy(dtype=np.float64)[to_snap]
    node_lat = located["latitude"].to_numpy(dtype=np.float64)
    node_lon = located["longitude"].to_numpy(dtype=np.float64)
    tree = cKDTree(_unit_vectors(node_lat, node_lon))
    _, nearest = tree.query(_unit_vectors(lat, lon))
    snap_m = haversine_m(lat, lon, node_lat[nearest], node_lon[nearest])
    located_ids = located["node_id"].astype(str).to_numpy()
    snapped[to_snap] = [node_index[located_ids[n]] for n in nearest]
    far = snap_m > max_snap_m
    if far.any():
        names = [
            f"{sensors['sensor_id'].iloc[to_snap[k]]} ({snap_m[k]:.0f} m)"
            for k in np.flatnonzero(far)
        ]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.warn(
            f"{len(names)} sensors are farther than {max_snap_m:g} m from any road node: {shown}",
            GraphWarning,
            stacklevel=3,
        )
    return snapped


def road_distances(
    roads: pd.DataFrame,
    sensors: pd.DataFrame,
    nodes: pd.DataFrame | None = None,
    max_snap_m: float = DEFAULT_MAX_SNAP_M,
) -> pd.DataFrame:
    """Directed shortest road distances between all pairs of sensors, in metres.

    The road graph is directed: a two-way segment gives both directions, a one-way segment only
    ``from_node -> to_node``; of parallel segments the shortest counts. Each sensor sits on its
    ``node_id``, or else on the road node nearest to its coordinates (haversine; needs
    ``nodes``). Dijkstra from every sensor node gives the distances.

    Shapes:
        roads: rows ``from_node, to_node, length_m, oneway`` (:func:`read_roads`).
        sensors: rows ``sensor_id, node_id, latitude, longitude`` (:func:`read_sensor_points`).
        returns rows ``from, to, cost`` for every pair with a route (``i == j`` included with
        cost 0), ordered by the sensors' order, ``from`` then ``to``.

    Warns:
        GraphWarning: sensors snapped farther than ``max_snap_m`` from any road node.

    Raises:
        GraphInputError: a ``node_id`` that is not in the road network, sensors given by
            coordinates without ``nodes``, ``max_snap_m`` not a positive number.
    """
    if not max_snap_m > 0:
        raise GraphInputError(f"max snap distance {max_snap_m!r} m must be positive")
    sensor_ids = sensors["sensor_id"].astype(str).tolist()
    if not sensor_ids:
        raise GraphInputError("no sensors given")
    if len(set(sensor_ids)) != len(sensor_ids):
        dup = next(s for k, s in enumerate(sensor_ids) if s in sensor_ids[:k])
        raise GraphInputError(f"duplicate sensor_id '{dup}'")
    if roads.empty:
        raise GraphInputError("the road network has no segments")

    from_node = roads["from_node"].astype(str).to_numpy()
    to_node = roads["to_node"].astype(str).to_numpy()
    all_nodes = pd.unique(np.concatenate([from_node, to_node]))
    node_index = {node: k for k, node in enumerate(all_nodes)}
    u = np.array([node_index[n] for n in from_node], dtype=np.int64)
    v = np.array([node_index[n] for n in to_node], dtype=np.int64)
    length_m = roads["length_m"].to_numpy(dtype=np.float64)
    oneway = roads["oneway"].to_numpy(dtype=bool) if "oneway" in roads else np.zeros(len(u), bool)

    # Both directions of two-way segments, then the shortest of parallel edges. Self-loops never
    # shorten a path and are dropped.
    edges = pd.DataFrame(
        {
            "u": np.concatenate([u, v[~oneway]]),
            "v": np.concatenate([v, u[~oneway]]),
            "length_m": np.concatenate([length_m, length_m[~oneway]]),
        }
    )
    edges = edges[edges["u"] != edges["v"]].groupby(["u", "v"], as_index=False)["length_m"].min()
    num_nodes = len(all_nodes)
    graph = sp.csr_matrix(
        (edges["length_m"].to_numpy(), (edges["u"].to_numpy(), edges["v"].to_numpy())),
        shape=(num_nodes, num_nodes),
    )

    sensor_node = _snap_sensors(sensors.reset_index(drop=True), node_index, nodes, max_snap_m)
    sources, inverse = np.unique(sensor_node, return_inverse=True)
    # (num_unique_sources, num_nodes): one Dijkstra run per distinct sensor node.
    dist_from_sources = shortest_path(graph, method="D", directed=True, indices=sources)
    dist = dist_from_sources[inverse][:, sensor_node]  # (num_sensors, num_sensors)

    i, j = np.nonzero(np.isfinite(dist))  # row-major: ordered by from, then to
    ids = np.asarray(sensor_ids, dtype=object)
    frame: pd.DataFrame = pd.DataFrame(
        {"from": ids[i], "to": ids[j], "cost": dist[i, j].astype(np.float64)}
    ).astype({"from": str, "to": str})
    return frame


def straight_line_distances(sensors: pd.DataFrame) -> pd.DataFrame:
    """Great-circle (haversine) distances in metres between all pairs of sensors.

    An approximation for users without a road network: straight lines ignore one-way streets,
    road layout and the direction of travel, so ``d(a, b) == d(b, a)``.

    Shapes:
        sensors: rows ``sensor_id, latitude, longitude``.
        returns ``N * N`` rows ``from, to, cost`` (``i == j`` with cost 0), ordered by ``from``
        then ``to`` in the sensors' order.

    Raises:
        GraphInputError: a sensor without coordinates, or duplicate sensor ids.
    """
    sensor_ids = sensors["sensor_id"].astype(str).tolist()
    if len(set(sensor_ids)) != len(sensor_ids):
        dup = next(s for k, s in enumerate(sensor_ids) if s in sensor_ids[:k])
        raise GraphInputError(f"duplicate sensor_id '{dup}'")
    if "latitude" not in sensors or "longitude" not in sensors:
        raise GraphInputError("straight-line distances need sensor latitude and longitude")
    lat = sensors["latitude"].to_numpy(dtype=np.float64)
    lon = sensors["longitude"].to_numpy(dtype=np.float64)
    missing = ~(np.isfinite(lat) & np.isfinite(lon))
    if missing.any():
        raise GraphInputError(
            f"sensor '{sensor_ids[int(np.flatnonzero(missing)[0])]}' has no latitude/longitude; "
            "straight-line distances need coordinates for every sensor"
        )
    dist = haversine_m(lat[:, None], lon[:, None], lat[None, :], lon[None, :])  # (N, N)
    np.fill_diagonal(dist, 0.0)
    num = len(sensor_ids)
    ids = np.asarray(sensor_ids, dtype=object)
    frame: pd.DataFrame = pd.DataFrame(
        {"from": np.repeat(ids, num), "to": np.tile(ids, num), "cost": dist.ravel()}
    ).astype({"from": str, "to": str})
    return frame
