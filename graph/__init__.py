"""The sensor graph: road distances -> DCRNN adjacency -> diffusion supports.

Pure functions, arrays in and arrays out. ``adj[i, j]`` is always the weight of the road from
sensor i to sensor j, in the order of the sensor ids. Two graphs are built from a link list:
DCRNN's Gaussian kernel of the costs (:func:`build_adjacency`) and every listed link with
weight 1 (:func:`link_adjacency`, what the papers on the PEMS0x releases use).

The torch forms of the supports (:mod:`~trafficcast.graph.tensors`) and PyG's ``edge_index``
(:mod:`~trafficcast.graph.pyg`) are imported from their modules, not from here: importing this
package loads neither torch nor PyG.
"""

from __future__ import annotations

from trafficcast.graph.adjacency import (
    adjacency_from_distance_matrix,
    build_adjacency,
    build_adjacency_with_sigma,
    distance_matrix,
)
from trafficcast.graph.distances import (
    haversine_m,
    read_road_nodes,
    read_roads,
    read_sensor_points,
    road_distances,
    straight_line_distances,
)
from trafficcast.graph.errors import GraphInputError, GraphWarning
from trafficcast.graph.io import (
    atomic_write,
    load_adjacency,
    read_dense_matrix,
    read_distances,
    read_sensor_ids,
    save_adjacency,
    write_distances,
)
from trafficcast.graph.links import (
    LinkCounts,
    check_repeated_links,
    count_links,
    link_adjacency,
)
from trafficcast.graph.pickle_safe import (
    RestrictedUnpickler,
    load_dcrnn_adj_pkl,
    load_pickle_restricted,
)
from trafficcast.graph.transitions import (
    FILTER_TYPES,
    compute_supports,
    random_walk_matrix,
    reverse_random_walk_matrix,
    scaled_laplacian,
)

__all__ = [
    "FILTER_TYPES",
    "GraphInputError",
    "GraphWarning",
    "LinkCounts",
    "RestrictedUnpickler",
    "adjacency_from_distance_matrix",
    "atomic_write",
    "build_adjacency",
    "build_adjacency_with_sigma",
    "check_repeated_links",
    "compute_supports",
    "count_links",
    "distance_matrix",
    "haversine_m",
    "link_adjacency",
    "load_adjacency",
    "load_dcrnn_adj_pkl",
    "load_pickle_restricted",
    "random_walk_matrix",
    "read_dense_matrix",
    "read_distances",
    "read_road_nodes",
    "read_roads",
    "read_sensor_ids",
    "read_sensor_points",
    "reverse_random_walk_matrix",
    "road_distances",
    "save_adjacency",
    "scaled_laplacian",
    "straight_line_distances",
    "write_distances",
]
