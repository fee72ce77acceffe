"""Road links between sensors: the graph a link list gives, and the account of it.

The ASTGCN-style releases (PEMS03/04/07/08) list road links ``from,to,cost``; the papers that
publish results on them build the graph from every listed link, not from a distance kernel.
:func:`link_adjacency` builds that graph, :func:`count_links` gives the account every graph
command prints (links listed, repeated, kept; sensors isolated), and
:func:`check_repeated_links` refuses a link listed twice with different costs.

The edge bookkeeping (repeats, self-loops, isolated sensors, direction) is PyTorch Geometric's
(``torch_geometric.utils``). PyG is imported inside the functions that use it, as
:mod:`~trafficcast.graph.pyg` is imported only where used: importing it takes seconds, and
``import trafficcast.graph`` (and the CLI's ``--help``) must not pay that.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trafficcast.graph.errors import GraphInputError

if TYPE_CHECKING:
    import torch

__all__ = ["LinkCounts", "check_repeated_links", "count_links", "link_adjacency"]

_NAMED_ISOLATED = 5  # how many isolated sensors a description names before "..."


@dataclass(frozen=True)
class LinkCounts:
    """How many links a graph's link list holds and how many the graph keeps.

    Attributes:
        num_sensors: sensors in the graph.
        links_kept: links ``i -> j`` between different sensors with a nonzero weight.
        isolated_ids: sensors with no kept link to or from another sensor, in sensor order.
        directed: some kept link ``i -> j`` has no kept ``j -> i``.
        links_listed: rows of the link list between two different sensors of the graph
            (None when the graph came without a list, e.g. a stored matrix).
        duplicates: of those, rows that repeat an earlier row exactly (dropped).
        self_loops: rows from a sensor to itself: no link between two sensors (left out of
            the link graph; the kernel keeps the weight DCRNN gives them on the diagonal).
        outside: rows that name a sensor not in the graph (ignored).
    """

    num_sensors: int
    links_kept: int
    isolated_ids: tuple[str, ...]
    directed: bool
    links_listed: int | None = None
    duplicates: int = 0
    self_loops: int = 0
    outside: int = 0

    @property
    def isolated(self) -> int:
        """How many sensors have no kept link."""
        return len(self.isolated_ids)

    def summary(self) -> dict[str, Any]:
        """The counts as ``import.json`` records them under ``graph``."""
        return {
            "links_listed": self.links_listed,
            "links_kept": self.links_kept,
            "duplicates": self.duplicates,
            "isolated": self.isolated,
            "self_loops": self.self_loops,
            "directed": self.directed,
        }

    def describe(self) -> str:
        """One line: ``links: 340 listed, 0 repeated (dropped), 340 kept; isolated sensors: ...``."""
        parts = []
        if self.links_listed is not None:
            parts.append(f"{self.links_listed} listed")
            parts.append(f"{self.duplicates} repeated (dropped)")
        if self.self_loops:
            parts.append(f"{self.self_loops} from a sensor to itself (not a link)")
        if self.outside:
            parts.append(f"{self.outside} naming other sensors (ignored)")
        parts.append(f"{self.links_kept} kept ({'directed' if self.directed else 'symmetric'})")
        named = ", ".join(self.isolated_ids[:_NAMED_ISOLATED])
        if self.isolated > _NAMED_ISOLATED:
            named += ", ..."
        isolated = f"isolated sensors: {self.isolated} of {self.num_sensors}"
        return f"links: {', '.join(parts)}; {isolated}" + (f" ({named})" if named else "")


def check_repeated_links(table: pd.DataFrame, source: str, lines: Sequence[int]) -> None:
    """Refuse a link listed twice with different costs, naming both rows.

    An exact repeat (same ``from``, ``to`` and ``cost``) is allowed here: :func:`link_adjacency`
    and :func:`count_links` drop and count it.

    Shapes:
        table: rows ``from``, ``to``, ``cost``; lines: the file line of each row.

    Raises:
        GraphInputError: ``{source}: lines 12 and 40 list the link a -> b with different costs
            (330.9 and 331.0)``, for the first such pair in file order.
    """
    if len(table) != len(lines):
        raise ValueError(f"{len(table)} rows but {len(lines)} line numbers")
    frame = pd.DataFrame(
        {
            "from": table["from"].astype(str).to_numpy(),
            "to": table["to"].astype(str).to_numpy(),
            "cost": table["cost"].to_numpy(dtype=np.float64),
            "line": np.asarray(lines, dtype=np.int64),
        }
    )
    repeated = frame[frame.duplicated(["from", "to"], keep=False)]
    if repeated.empty:
        return
    first = repeated.drop_duplicates(["from", "to"]).set_index(["from", "to"])
    # Each repeat compared with its link's first row: a different cost is a conflict.
    earlier = first.loc[pd.MultiIndex.from_frame(repeated[["from", "to"]])]
    conflict = repeated["cost"].to_numpy() != earlier["cost"].to_numpy()
    if not conflict.any():
        return
    k = int(np.argmax(conflict))
    row, base = repeated.iloc[k], earlier.iloc[k]
    raise GraphInputError(
        f"{source}: lines {int(base['line'])} and {int(row['line'])} list the link "
        f"{row['from']} -> {row['to']} with different costs ({base['cost']:g} and "
        f"{row['cost']:g})"
    )


@dataclass(frozen=True)
class _Listed:
    """A link list mapped onto the sensors: its distinct links and the counts of the rest."""

    edge_index: torch.Tensor  # (2, E) int64, sorted, no repeats, no self-loops
    listed: int
    duplicates: int
    self_loops: int
    outside: int


def _pyg_utils() -> ModuleType:
    """``torch_geometric.utils``, imported on first use."""
    with warnings.catch_warnings():
        # torch_geometric's import emits torch.jit deprecation noise that is not ours to report.
        warnings.simplefilter("ignore", DeprecationWarning)
        # PyG's import takes seconds: paid only by code that builds or counts a link graph.
        import torch_geometric.utils as utils
    module: ModuleType = utils
    return module


def _listed_links(links: pd.DataFrame, sensor_ids: Sequence[str]) -> _Listed:
    """The rows of ``links`` whose ends are both sensors, as distinct links ``i -> j``."""
    # torch comes with PyG, imported on first use for the same reason.
    import torch

    pyg = _pyg_utils()
    index = {str(sensor): k for k, sensor in enumerate(sensor_ids)}
    i = links["from"].astype(str).map(index)
    j = links["to"].astype(str).map(index)
    inside = (i.notna() & j.notna()).to_numpy()
    rows = np.stack(
        [i[inside].to_numpy(dtype=np.int64), j[inside].to_numpy(dtype=np.int64)]
    )  # (2, R)
    edge_index = torch.from_numpy(rows)
    between, _ = pyg.remove_self_loops(edge_index)
    distinct = pyg.coalesce(between, num_nodes=len(index))  # sorted by (i, j), repeats merged
    return _Listed(
        edge_index=distinct,
        listed=int(between.size(1)),
        duplicates=int(between.size(1) - distinct.size(1)),
        self_loops=int(edge_index.size(1) - between.size(1)),
        outside=int((~inside).sum()),
    )


def _counts(
    edge_index: torch.Tensor, sensor_ids: Sequence[str], listed: _Listed | None
) -> LinkCounts:
    """The account of a graph whose links between different sensors are ``edge_index``."""
    pyg = _pyg_utils()
    num_nodes = len(sensor_ids)
    # A sensor is isolated when no kept link starts or ends at it.
    touching = pyg.degree(edge_index[0], num_nodes) + pyg.degree(edge_index[1], num_nodes)
    isolated = tuple(str(sensor_ids[int(k)]) for k in np.flatnonzero(touching.numpy() == 0))
    return LinkCounts(
        num_sensors=num_nodes,
        links_kept=int(edge_index.size(1)),
        isolated_ids=isolated,
        directed=not pyg.is_undirected(edge_index, num_nodes=num_nodes),
        links_listed=None if listed is None else listed.listed,
        duplicates=0 if listed is None else listed.duplicates,
        self_loops=0 if listed is None else listed.self_loops,
        outside=0 if listed is None else listed.outside,
    )


def link_adjacency(links: pd.DataFrame, sensor_ids: Sequence[str]) -> tuple[np.ndarray, LinkCounts]:
    """The graph of every listed link: ``adj[i, j] = 1`` for each row ``i -> j``.

    What ASTGCN's ``get_adjacency_matrix`` builds from the releases' ``distance.csv`` (weight 1
    per listed link, direction as listed). Exact repeats count once; rows from a sensor to
    itself are no link between two sensors and are left out; rows naming a sensor that is not
    in ``sensor_ids`` are ignored. All are counted.

    Shapes:
        links: rows ``from``, ``to`` (and ``cost``, unused); returns ``(N, N)`` float32 with
        ``N == len(sensor_ids)``, in the order of ``sensor_ids``.
    """
    listed = _listed_links(links, sensor_ids)
    num_nodes = len(sensor_ids)
    if listed.edge_index.size(1):
        batch = _pyg_utils().to_dense_adj(listed.edge_index, max_num_nodes=num_nodes)  # (1, N, N)
        dense = batch[0].numpy().astype(np.float32)  # (N, N)
    else:
        dense = np.zeros((num_nodes, num_nodes), dtype=np.float32)
    return dense, _counts(listed.edge_index, sensor_ids, listed)


def count_links(
    adj: np.ndarray, sensor_ids: Sequence[str], links: pd.DataFrame | None = None
) -> LinkCounts:
    """The account of the graph ``adj``: its links between different sensors (nonzero
    ``adj[i, j]``, ``i != j``) and its isolated sensors; with ``links``, also what that list
    held (listed, repeated, self-loops, naming other sensors).

    Shapes:
        adj: ``(N, N)`` in the order of ``sensor_ids``.

    Raises:
        GraphInputError: ``adj`` is not N×N for the N ids.
    """
    # torch comes with PyG, imported on first use (see _pyg_utils).
    import torch

    pyg = _pyg_utils()
    num_nodes = len(sensor_ids)
    if np.shape(adj) != (num_nodes, num_nodes):
        raise GraphInputError(
            f"adjacency has shape {np.shape(adj)}, expected ({num_nodes}, {num_nodes})"
        )
    dense = torch.as_tensor(np.asarray(adj, dtype=np.float32))  # (N, N)
    edge_index, _ = pyg.dense_to_sparse(dense)
    between, _ = pyg.remove_self_loops(edge_index)
    listed = None if links is None else _listed_links(links, sensor_ids)
    return _counts(between, sensor_ids, listed)
