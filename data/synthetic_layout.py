"""The road network of the synthetic data: freeway corridors, interchanges, road distances.

Part of :mod:`~trafficcast.data.synthetic`, which describes the whole generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["Layout", "make_layout", "road_distances"]

# Layout (metres).
_SPACING_M = (500.0, 2000.0)
_BRANCH_PROBABILITY = 0.7  # a new freeway starts at an interchange with an existing one
_ROAD_DETOUR = 1.15  # ramps are longer than the straight line between sensors


@dataclass
class Layout:
    """Where the sensors are and the directed road segments between them."""

    x_m: np.ndarray  # (N,)
    y_m: np.ndarray  # (N,)
    corridor: np.ndarray  # (N,) corridor of each sensor
    num_corridors: int
    edge_from: np.ndarray  # (E,) directed road segments between consecutive sensors
    edge_to: np.ndarray
    edge_m: np.ndarray


def make_layout(num_sensors: int, rng: np.random.Generator) -> Layout:
    """Freeways as straight two-way lines; each direction is a corridor (a sensor chain).

    A freeway either branches from an interchange with an earlier one (its outbound direction
    fed by the sensor there, its inbound direction feeding the next sensor downstream of it) or
    starts elsewhere in a region that grows with the number of freeways.
    """
    if num_sensors < 4:
        num_freeways, sizes = 1, np.array([num_sensors])
    else:
        num_freeways = max(1, min(num_sensors // 8, round(num_sensors / 24)))
        sizes = np.full(2 * num_freeways, num_sensors // (2 * num_freeways))
        sizes[: num_sensors % (2 * num_freeways)] += 1
    region_m = 15_000.0 * math.sqrt(num_freeways)

    x = np.empty(num_sensors)
    y = np.empty(num_sensors)
    corridor = np.empty(num_sensors, dtype=np.int64)
    chains: list[np.ndarray] = []  # sensor indices of each corridor, in travel order
    edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    placed = 0
    for f in range(num_freeways):
        heading = rng.uniform(0.0, 2.0 * math.pi)
        ux, uy = math.cos(heading), math.sin(heading)
        parent = -1
        if f > 0 and rng.random() < _BRANCH_PROBABILITY:
            parent = int(rng.integers(0, placed))
            gap = rng.uniform(600.0, 1200.0)
            ox, oy = x[parent] + gap * ux, y[parent] + gap * uy
        else:
            ox, oy = rng.uniform(-region_m / 2, region_m / 2, size=2)
        directions = (0, 1) if len(sizes) > 1 else (0,)
        for direction in directions:
            c = len(chains)
            n = int(sizes[c])
            along = np.concatenate([[0.0], np.cumsum(rng.uniform(*_SPACING_M, size=n - 1))])
            # Outbound (0) travels away from the freeway's origin, inbound (1) towards it, 30 m
            # to the side; the two directions share no road, so no edge joins them.
            if direction == 1:
                along = along[::-1]
            side = 0.0 if direction == 0 else 30.0
            members = np.arange(placed, placed + n)
            x[members] = ox + along * ux - side * uy
            y[members] = oy + along * uy + side * ux
            corridor[members] = c
            chains.append(members)
            edges.append((members[:-1], members[1:], np.abs(np.diff(along))))
            placed += n
            if parent >= 0:
                # Interchange: outbound starts from the parent's road, inbound merges into it.
                if direction == 0:
                    src, dst = parent, members[0]
                else:
                    parent_chain = chains[corridor[parent]]
                    k = int(np.searchsorted(parent_chain, parent))
                    src, dst = members[-1], int(parent_chain[min(k + 1, len(parent_chain) - 1)])
                straight = math.hypot(x[src] - x[dst], y[src] - y[dst])
                edges.append(
                    (
                        np.array([src]),
                        np.array([dst]),
                        np.array([max(straight, 300.0) * _ROAD_DETOUR]),
                    )
                )
    edge_from = np.concatenate([e[0] for e in edges]).astype(np.int64)
    edge_to = np.concatenate([e[1] for e in edges]).astype(np.int64)
    edge_m = np.concatenate([e[2] for e in edges]).astype(np.float64)
    return Layout(x, y, corridor, len(chains), edge_from, edge_to, edge_m)


def road_distances(
    layout: Layout, num_sensors: int, limit_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed shortest road distances up to ``limit_m``, self pairs (0 m) included.

    Shapes:
        returns from (P,), to (P,) int64 sensor positions and cost (P,) metres, sorted by
        (from, to).
    """
    graph = sparse.csr_matrix(
        (layout.edge_m, (layout.edge_from, layout.edge_to)), shape=(num_sensors, num_sensors)
    )
    froms, tos, costs = [], [], []
    chunk = 512  # bounds the dense (chunk, N) float64 distance block: 41 MB at N = 10,000
    for lo in range(0, num_sensors, chunk):
        rows = np.arange(lo, min(lo + chunk, num_sensors))
        block = csgraph.dijkstra(graph, directed=True, indices=rows, limit=limit_m)
        r, c = np.nonzero(np.isfinite(block))
        froms.append(rows[r])
        tos.append(c)
        costs.append(block[r, c])
    return (
        np.concatenate(froms).astype(np.int64),
        np.concatenate(tos).astype(np.int64),
        np.concatenate(costs),
    )
