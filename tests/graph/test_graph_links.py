"""The link graph of the PEMS0x releases, on their real files (``fixtures/pems0x``): the cost
column under its several names, every listed link kept, repeats dropped and counted, a link
listed with two costs refused, and the counts the commands print."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast.graph import (
    GraphInputError,
    build_adjacency_with_sigma,
    count_links,
    link_adjacency,
    read_distances,
    read_sensor_ids,
)

PEMS = Path(__file__).resolve().parent / "fixtures" / "pems0x"


def _numbered(n: int) -> list[str]:
    return [str(k) for k in range(n)]


# --- item 1: the cost column under the names the releases use ---------------------------------


def test_pems03_header_from_to_distance_is_read() -> None:
    links = read_distances(PEMS / "PEMS03" / "PEMS03.csv")
    assert len(links) == 547
    assert links.iloc[0].tolist() == ["317842", "318711", 0.872]
    assert links["cost"].max() == pytest.approx(10.194)


@pytest.mark.parametrize(
    ("text", "cost"),
    [
        ("from,to,weight\na,b,2.5\n", 2.5),
        ("from,to,length_km\na,b,2.5\n", 2.5),  # by position: from,to,<anything>
        ("weight,to,from\n2.5,b,a\n", 2.5),  # by name, in any order
        ("from,to,distance,cost\na,b,2.5,9\n", 9.0),  # cost comes first of the names
    ],
)
def test_cost_column_by_name_or_position(tmp_path: Path, text: str, cost: float) -> None:
    path = tmp_path / "links.csv"
    path.write_text(text)
    assert read_distances(path).to_dict("list") == {"from": ["a"], "to": ["b"], "cost": [cost]}


# --- item 2: every listed link, no sensor isolated -------------------------------------------


@pytest.mark.parametrize(
    ("path", "num_sensors", "links"),
    [("PEMS04/distance.csv", 307, 340), ("PEMS07/PEMS07.csv", 883, 866)],
)
def test_every_listed_link_is_kept_and_no_sensor_isolated(
    path: str, num_sensors: int, links: int
) -> None:
    table = read_distances(PEMS / path)
    adj, counts = link_adjacency(table, _numbered(num_sensors))
    assert adj.shape == (num_sensors, num_sensors) and adj.dtype == np.float32
    assert float(adj.sum()) == links and set(np.unique(adj)) == {0.0, 1.0}
    assert counts.summary() == {
        "links_listed": links,
        "links_kept": links,
        "duplicates": 0,
        "isolated": 0,
        "self_loops": 0,
        "directed": True,
    }
    # Direction as listed: PEMS04's first row is 73 -> 5, and 5 -> 73 is not listed.
    first = table.iloc[0]
    i, j = int(first["from"]), int(first["to"])
    assert adj[i, j] == 1.0 and adj[j, i] == 0.0


def test_dcrnn_kernel_on_pems04_keeps_209_links_and_isolates_67() -> None:
    table = read_distances(PEMS / "PEMS04" / "distance.csv")
    ids = _numbered(307)
    adj, _ = build_adjacency_with_sigma(table, ids, threshold=0.1)
    counts = count_links(adj, ids, table)
    assert (counts.links_listed, counts.links_kept, counts.isolated) == (340, 209, 67)
    assert counts.isolated_ids[:3] == ("0", "6", "18")
    assert counts.describe() == (
        "links: 340 listed, 0 repeated (dropped), 209 kept (directed); isolated sensors: 67 of "
        "307 (0, 6, 18, 20, 24, ...)"
    )


def test_pems03_by_station_id_drops_its_self_loop() -> None:
    table = read_distances(PEMS / "PEMS03" / "PEMS03.csv")
    ids = read_sensor_ids(PEMS / "PEMS03" / "PEMS03.txt")
    assert len(ids) == 358
    adj, counts = link_adjacency(table, ids)
    assert (counts.links_listed, counts.self_loops, counts.links_kept) == (546, 1, 546)
    assert counts.isolated == 0
    k = ids.index("314013")
    assert adj[k, k] == 0.0  # 314013,314013,0.0 is no road between two sensors
    assert adj[ids.index("317842"), ids.index("318711")] == 1.0


# --- item 3: repeats dropped and counted; a link with two costs refused -----------------------


def test_pems08_exact_repeats_are_dropped_and_counted() -> None:
    table = read_distances(PEMS / "PEMS08" / "distance.csv")
    assert len(table) == 295
    adj, counts = link_adjacency(table, _numbered(170))
    assert (counts.links_listed, counts.duplicates, counts.links_kept) == (295, 18, 277)
    assert counts.isolated == 0
    assert float(adj.sum()) == 277
    # The kernel's sigma is taken over the distance matrix, where a repeat is one entry: the
    # 18 repeats do not change it.
    kernel, sigma = build_adjacency_with_sigma(table, _numbered(170), threshold=0.1)
    _, unique_sigma = build_adjacency_with_sigma(table.drop_duplicates(), _numbered(170), 0.1)
    assert sigma == unique_sigma == pytest.approx(217.5768, abs=1e-4)
    counted = count_links(kernel, _numbered(170), table)
    assert (counted.duplicates, counted.links_kept, counted.isolated) == (18, 137, 48)


def test_link_listed_twice_with_different_costs_names_both_lines(tmp_path: Path) -> None:
    # The real PEMS04 file with its row 73,5,352.6 (line 2) listed again at the end, changed.
    text = (PEMS / "PEMS04" / "distance.csv").read_text()
    path = tmp_path / "distance.csv"
    path.write_text(text.rstrip("\r\n") + "\r\n73,5,360.0\r\n")
    with pytest.raises(GraphInputError) as info:
        read_distances(path)
    assert str(info.value) == (
        f"{path}: lines 2 and 342 list the link 73 -> 5 with different costs (352.6 and 360)"
    )


def test_outside_rows_and_matrix_without_list_are_counted() -> None:
    table = pd.DataFrame(
        {"from": ["a", "b", "x", "c"], "to": ["b", "a", "a", "c"], "cost": [1.0, 1.0, 2.0, 0.0]}
    )
    adj, counts = link_adjacency(table, ["a", "b", "c"])
    assert (counts.links_listed, counts.outside, counts.self_loops) == (2, 1, 1)
    assert counts.isolated_ids == ("c",) and not counts.directed
    stored = count_links(adj, ["a", "b", "c"])
    assert stored.links_listed is None and stored.links_kept == 2
    assert stored.describe() == "links: 2 kept (symmetric); isolated sensors: 1 of 3 (c)"
