"""Road distances over a small hand-made network, snapping, and haversine."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast.graph import (
    GraphInputError,
    GraphWarning,
    haversine_m,
    read_road_nodes,
    read_roads,
    read_sensor_points,
    road_distances,
    straight_line_distances,
)

# A--B 100, B--C 200, B--E 50, E--C 120, D--A 400, D--F 80 (two-way);
# C->D 150 one-way; C->E 90 one-way, parallel to E--C 120 (the shorter counts from C to E).
ROADS = """from_node,to_node,length_m,oneway
A,B,100,no
B,C,200,
B,E,50,0
E,C,120,false
C,D,150,yes
D,A,400,No
D,F,80,FALSE
C,E,90,1
"""

# Shortest paths, worked out by hand:
#   A->C: A-B-E-C = 270 (A-B-C = 300)          C->A: C-E-B-A = 90+50+100 = 240
#   A->D: A-D = 400 (A-B-E-C-D = 420)         D->A: D-A = 400 (C->D is one-way)
#   C->D: 150 (one-way)                        D->C: D-A-B-E-C = 400+270 = 670
#   A->F: 400+80 = 480, F->A: 480              C->F: 150+80 = 230, F->C: 80+670 = 750
#   D<->F: 80
EXPECTED = {
    "sA": {"sA": 0, "sC": 270, "sD": 400, "sF": 480},
    "sC": {"sA": 240, "sC": 0, "sD": 150, "sF": 230},
    "sD": {"sA": 400, "sC": 670, "sD": 0, "sF": 80},
    "sF": {"sA": 480, "sC": 750, "sD": 80, "sF": 0},
}

NODES = """node_id,latitude,longitude
A,34.000,-118.000
B,34.000,-117.999
C,34.000,-117.997
D,33.997,-118.000
E,34.001,-117.998
F,33.996,-118.000
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _as_dict(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in df.itertuples(index=False):
        out.setdefault(row[0], {})[row[1]] = row[2]
    return out


def test_haversine_known_distances() -> None:
    # One degree of latitude is 111.195 km on a sphere of mean Earth radius.
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111_195.0, abs=1.0)
    assert haversine_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(111_195.0, abs=1.0)
    # Paris to London, about 343.5 km.
    assert haversine_m(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343_500, rel=2e-3)
    assert haversine_m(10.0, 20.0, 10.0, 20.0) == 0.0
    # antipodes: half the circumference, no NaN from rounding
    assert haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(np.pi * 6_371_008.8, rel=1e-12)


def test_read_roads_parses_oneway_and_keeps_ids_as_strings(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "roads.csv", ROADS + "007,7,1.5,YES\n"))
    assert roads["oneway"].tolist() == [False] * 4 + [True, False, False, True, True]
    assert roads["length_m"].tolist()[:2] == [100.0, 200.0]
    assert roads.iloc[-1][["from_node", "to_node"]].tolist() == ["007", "7"]


def test_read_roads_oneway_column_is_optional(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "roads.csv", "from_node,to_node,length_m\na,b,5\n"))
    assert roads["oneway"].tolist() == [False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("from_node,to_node\na,b\n", r"roads\.csv: missing column 'length_m'"),
        ("from_node,to_node,length_m\na,b,5\nb,c,0\n", r"line 3: length_m '0' is not a finite"),
        ("from_node,to_node,length_m\na,b,inf\n", r"line 2: length_m 'inf'"),
        ("from_node,to_node,length_m\na,b,-1\n", r"line 2: length_m '-1'"),
        ("from_node,to_node,length_m,oneway\na,b,5,maybe\n", r"line 2: oneway 'maybe'"),
        ("from_node,to_node,length_m\n,b,5\n", r"line 2: empty 'from_node'"),
        ("", r"roads\.csv: empty file"),
    ],
)
def test_read_roads_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GraphInputError, match=message):
        read_roads(_write(tmp_path / "roads.csv", text))


def test_read_sensor_points_node_id_wins(tmp_path: Path) -> None:
    text = "sensor_id,node_id,latitude,longitude\ns1,A,,\ns2,,34.0,-118.0\ns3,B,1.0,2.0\n"
    sensors = read_sensor_points(_write(tmp_path / "s.csv", text))
    assert sensors["sensor_id"].tolist() == ["s1", "s2", "s3"]
    assert sensors["node_id"].isna().tolist() == [False, True, False]
    assert sensors.loc[0, "node_id"] == "A"
    assert np.isnan(sensors.loc[0, "latitude"])
    assert sensors.loc[1, "latitude"] == 34.0


def test_read_sensor_points_accepts_dcrnn_locations_file() -> None:
    path = Path(__file__).resolve().parents[2] / "data/sample/graph_sensor_locations.csv"
    sensors = read_sensor_points(path)
    assert len(sensors) == 207
    assert sensors.loc[0, "sensor_id"] == "773869"
    assert sensors.loc[0, "latitude"] == pytest.approx(34.15497)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sensor_id,latitude\ns1,34\n", "missing column 'node_id' or 'latitude,longitude'"),
        ("node_id\nA\n", "missing column 'sensor_id'"),
        ("sensor_id,node_id,latitude,longitude\ns1,,,\n", "line 2: sensor 's1' has neither"),
        ("sensor_id,latitude,longitude\ns1,95,0\n", r"line 2: latitude '95' is not a finite"),
        ("sensor_id,node_id\ns1,A\ns1,B\n", "line 3: duplicate sensor_id 's1'"),
    ],
)
def test_read_sensor_points_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GraphInputError, match=message):
        read_sensor_points(_write(tmp_path / "s.csv", text))


def test_road_distances_match_hand_computed_shortest_paths(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "roads.csv", ROADS))
    sensors = read_sensor_points(
        _write(tmp_path / "s.csv", "sensor_id,node_id\nsA,A\nsC,C\nsD,D\nsF,F\n")
    )
    distances = road_distances(roads, sensors)
    assert list(distances.columns) == ["from", "to", "cost"]
    assert len(distances) == 16  # all pairs reachable, i == j included
    assert _as_dict(distances) == EXPECTED
    # ordered by sensor order, from then to
    assert distances["from"].tolist()[:4] == ["sA"] * 4
    assert distances["to"].tolist()[:4] == ["sA", "sC", "sD", "sF"]
    # the one-way street makes the graph directed
    d = _as_dict(distances)
    assert d["sC"]["sD"] != d["sD"]["sC"]


def test_unreachable_pairs_are_omitted(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "r.csv", "from_node,to_node,length_m,oneway\na,b,10,1\n"))
    sensors = read_sensor_points(_write(tmp_path / "s.csv", "sensor_id,node_id\nx,a\ny,b\n"))
    d = _as_dict(road_distances(roads, sensors))
    assert d == {"x": {"x": 0, "y": 10}, "y": {"y": 0}}


def test_sensors_snapped_by_coordinates(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "roads.csv", ROADS))
    nodes = read_road_nodes(_write(tmp_path / "nodes.csv", NODES))
    # sE is ~11 m from node E; sA2 sits on A's node by id; sB sits ~9 m east of B.
    text = (
        "sensor_id,node_id,latitude,longitude\nsE,,34.0011,-117.998\nsA2,A,,\nsB,,34.0,-117.9989\n"
    )
    sensors = read_sensor_points(_write(tmp_path / "s.csv", text))
    d = _as_dict(road_distances(roads, sensors, nodes))
    assert d["sE"] == {"sE": 0, "sA2": 150, "sB": 50}
    assert d["sA2"] == {"sE": 150, "sA2": 0, "sB": 100}
    assert d["sB"] == {"sE": 50, "sA2": 100, "sB": 0}


def test_far_sensors_are_named_in_a_warning(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "roads.csv", ROADS))
    nodes = read_road_nodes(_write(tmp_path / "nodes.csv", NODES))
    # "far" is 5,452 m from its nearest node E (5,560 m from A); "near" sits on A.
    text = "sensor_id,latitude,longitude\nnear,34.0,-118.0\nfar,34.05,-118.0\n"
    sensors = read_sensor_points(_write(tmp_path / "s.csv", text))
    with pytest.warns(GraphWarning, match=r"^1 sensors are farther than 500 m .*: far \(5452 m\)$"):
        d = _as_dict(road_distances(roads, sensors, nodes))
    assert d["far"]["near"] == 150  # E-B-A
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a wider limit: no warning at all
        road_distances(roads, sensors, nodes, max_snap_m=6000)


def test_coordinates_without_nodes_file_and_unknown_node(tmp_path: Path) -> None:
    roads = read_roads(_write(tmp_path / "roads.csv", ROADS))
    by_coords = read_sensor_points(
        _write(tmp_path / "s.csv", "sensor_id,latitude,longitude\ns,1,2\n")
    )
    with pytest.raises(GraphInputError, match=r"needs a road nodes file .*\(--nodes\)"):
        road_distances(roads, by_coords)
    unknown = read_sensor_points(_write(tmp_path / "u.csv", "sensor_id,node_id\ns,Z\n"))
    with pytest.raises(GraphInputError, match="sensor 's': node_id 'Z' is not a node"):
        road_distances(roads, unknown)


def test_straight_line_distances_are_symmetric_haversine(tmp_path: Path) -> None:
    text = "sensor_id,latitude,longitude\na,0,0\nb,1,0\nc,0,1\n"
    sensors = read_sensor_points(_write(tmp_path / "s.csv", text))
    distances = straight_line_distances(sensors)
    assert len(distances) == 9
    d = _as_dict(distances)
    assert d["a"]["a"] == 0.0
    assert d["a"]["b"] == pytest.approx(111_195.0, abs=1.0)
    assert d["b"]["a"] == d["a"]["b"]
    assert d["b"]["c"] == pytest.approx(157_249.6, abs=1.0)  # sqrt(2) degrees, nearly flat
    missing = read_sensor_points(_write(tmp_path / "m.csv", "sensor_id,node_id\nx,A\n"))
    with pytest.raises(GraphInputError, match="sensor 'x' has no latitude/longitude"):
        straight_line_distances(missing)
