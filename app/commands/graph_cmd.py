"""CLI subcommands for the sensor graph: ``graph``, ``graph-info`` and ``distances``."""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import pandas as pd

from trafficcast.graph.adjacency import adjacency_from_distance_matrix, build_adjacency_with_sigma
from trafficcast.graph.distances import (
    read_road_nodes,
    read_roads,
    read_sensor_points,
    road_distances,
    straight_line_distances,
)
from trafficcast.graph.errors import GraphInputError, GraphWarning
from trafficcast.graph.io import (
    load_adjacency,
    read_dense_matrix,
    read_distances,
    read_sensor_ids,
    save_adjacency,
    write_distances,
)
from trafficcast.graph.links import count_links

DEFAULT_THRESHOLD = 0.1
DEFAULT_MAX_SNAP_M = 500.0
_NAMED_ISOLATED = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``graph``, ``graph-info`` and ``distances`` to the ``trafficcast`` parser."""
    _register_graph(subparsers)
    p = subparsers.add_parser(
        "graph-info",
        help="summarise an adjacency (.npz from 'graph' or DCRNN's adj_mx.pkl)",
    )
    p.add_argument("adjacency", metavar="ADJ", help=".npz from 'trafficcast graph' or DCRNN .pkl")
    p.set_defaults(handler=run_graph_info)
    _register_distances(subparsers)


def _register_graph(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "graph",
        help="build the DCRNN adjacency (Gaussian kernel of road distances) as .npz",
        description=(
            "Build DCRNN's sensor graph: w_ij = exp(-(d_ij/sigma)^2), sigma the standard "
            "deviation of the finite distances, weights below the threshold set to 0. The "
            "distances come as from,to,cost rows or as a dense N x N matrix."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--distances",
        metavar="D.csv",
        help="from,to,cost rows (the cost also as 'distance' or 'weight', or the third column "
        "of from,to,<cost>)",
    )
    source.add_argument(
        "--distance-matrix",
        metavar="D.csv",
        help="dense N x N distances (empty or inf: no road), optionally under a "
        "header row of sensor ids",
    )
    p.add_argument(
        "--cost-unit",
        metavar="UNIT",
        help="the distances' unit, printed with sigma (e.g. m for DCRNN's METR-LA and PEMS-BAY "
        "files); default: not stated, as in the PEMS0x releases",
    )
    p.add_argument(
        "--sensor-ids",
        metavar="IDS.txt",
        help="sensor ids, comma-separated (DCRNN format) or one per line; sets the matrix order "
        "(required with --distances, and with a --distance-matrix without a header)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"weights below this are set to 0 (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument("--output", required=True, metavar="ADJ.npz", help="output adjacency (.npz)")
    p.set_defaults(handler=run_graph)


def _register_distances(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distances",
        help="compute sensor-to-sensor road distances (from,to,cost) from a road network",
        description=(
            "Shortest road distances between sensors over a road table "
            "(from_node,to_node,length_m[,oneway]); or, with --straight-line, great-circle "
            "distances (an approximation that ignores roads)."
        ),
    )
    p.add_argument(
        "--roads",
        metavar="ROADS.csv",
        help="road segments: from_node,to_node,length_m[,oneway]",
    )
    p.add_argument(
        "--sensors",
        required=True,
        metavar="SENSORS.csv",
        help="sensor_id plus node_id and/or latitude,longitude",
    )
    p.add_argument(
        "--nodes",
        metavar="NODES.csv",
        help="node_id,latitude,longitude: needed to snap sensors given by coordinates",
    )
    p.add_argument(
        "--max-snap-m",
        type=float,
        default=DEFAULT_MAX_SNAP_M,
        help=f"warn about sensors farther than this from any road node (default "
        f"{DEFAULT_MAX_SNAP_M:g})",
    )
    p.add_argument(
        "--straight-line",
        action="store_true",
        help="use great-circle distances between sensors instead of roads (approximation)",
    )
    p.add_argument("--output", required=True, metavar="D.csv", help="output from,to,cost CSV")
    p.set_defaults(handler=run_distances)


def run_graph(args: argparse.Namespace) -> int:
    given_ids = read_sensor_ids(args.sensor_ids) if args.sensor_ids else None
    if args.distances is not None:
        if given_ids is None:
            raise GraphInputError("--distances needs --sensor-ids IDS.txt (the matrix order)")
        sensor_ids = given_ids
        links = read_distances(args.distances)
        adj, sigma = build_adjacency_with_sigma(links, sensor_ids, args.threshold)
    else:
        header_ids, dist = read_dense_matrix(args.distance_matrix, what="distances")
        sensor_ids = _matrix_ids(args.distance_matrix, header_ids, given_ids, len(dist))
        adj, sigma = adjacency_from_distance_matrix(dist, sensor_ids, args.threshold)
        links = _matrix_links(dist, sensor_ids)
    save_adjacency(args.output, sensor_ids, adj)
    # The unit only where the user states it: the PEMS0x releases do not (PEMS07: 0.03-20.5).
    unit = f" {args.cost_unit}" if args.cost_unit else " in the file's unit"
    width = "no distances" if math.isnan(sigma) else f"sigma {sigma:.1f}{unit}"
    print(
        f"wrote {args.output}: {len(sensor_ids)} sensors, {int((adj != 0).sum())} nonzero "
        f"weights (threshold {args.threshold:g}, {width})"
    )
    print(count_links(adj, sensor_ids, links).describe())
    return 0


def _matrix_links(dist: np.ndarray, sensor_ids: list[str]) -> pd.DataFrame:
    """The finite entries of a dense distance matrix as ``from,to,cost`` rows.

    Shapes: ``dist (N, N)`` -> one row per finite entry.
    """
    i, j = np.nonzero(np.isfinite(dist))
    ids = np.asarray(sensor_ids, dtype=object)
    return pd.DataFrame({"from": ids[i], "to": ids[j], "cost": dist[i, j]})


def _matrix_ids(
    path: str, header_ids: list[str] | None, given_ids: list[str] | None, size: int
) -> list[str]:
    """A dense matrix's sensor order: its header's, which ``--sensor-ids`` must then equal,
    or ``--sensor-ids``'."""
    if header_ids is not None:
        if given_ids is not None and given_ids != header_ids:
            raise GraphInputError(
                f"{path}: its header's sensor ids are not those of --sensor-ids, in that order"
            )
        return header_ids
    if given_ids is None:
        raise GraphInputError(f"{path}: no header of sensor ids; give --sensor-ids IDS.txt")
    if len(given_ids) != size:
        raise GraphInputError(
            f"{path}: the matrix is {size} x {size} but --sensor-ids lists {len(given_ids)} ids"
        )
    return given_ids


def run_graph_info(args: argparse.Namespace) -> int:
    sensor_ids, adj = load_adjacency(args.adjacency)
    num_nodes = len(sensor_ids)
    nonzero = adj != 0
    off_diagonal = nonzero & ~np.eye(num_nodes, dtype=bool)
    counts = count_links(adj, sensor_ids)
    isolated = list(counts.isolated_ids)
    symmetric = bool(np.array_equal(adj, adj.T))
    print(f"{args.adjacency}: {num_nodes} sensors")
    print(
        f"nonzero weights: {int(nonzero.sum())} ({int(off_diagonal.sum())} between different "
        f"sensors, {int(np.diag(nonzero).sum())} self-loops)"
    )
    if off_diagonal.any():
        weights = adj[off_diagonal]
        print(
            f"edge weights: min {weights.min():.4g}, mean {weights.mean():.4g}, "
            f"max {weights.max():.4g}"
        )
    print(f"symmetric: {'yes' if symmetric else 'no (directed)'}")
    named = ", ".join(isolated[:_NAMED_ISOLATED]) + (
        ", ..." if len(isolated) > _NAMED_ISOLATED else ""
    )
    print(f"isolated nodes: {len(isolated)}" + (f" ({named})" if isolated else ""))
    print(counts.describe())
    return 0


def run_distances(args: argparse.Namespace) -> int:
    if args.straight_line and args.roads:
        raise GraphInputError("give either --roads ROADS.csv or --straight-line, not both")
    if not args.straight_line and not args.roads:
        raise GraphInputError("give --roads ROADS.csv (or --straight-line for an approximation)")
    sensors = read_sensor_points(args.sensors)
    if args.straight_line:
        warnings.warn(
            "straight-line distances are an approximation: they ignore one-way streets and "
            "road layout",
            GraphWarning,
            stacklevel=2,
        )
        distances = straight_line_distances(sensors)
        how = "straight-line"
    else:
        roads = read_roads(args.roads)
        nodes = read_road_nodes(args.nodes) if args.nodes else None
        distances = road_distances(roads, sensors, nodes, max_snap_m=args.max_snap_m)
        how = "road"
    write_distances(args.output, distances)
    num_sensors = len(sensors)
    between = int((distances["from"] != distances["to"]).sum())
    print(
        f"wrote {args.output}: {len(distances)} {how} distances between {num_sensors} sensors "
        f"({between} of {num_sensors * (num_sensors - 1)} ordered pairs of different sensors "
        "connected)"
    )
    return 0
