"""``trafficcast import libcity``: LibCity atomic files (``.geo``, ``.rel``, ``.dyna`` and
``config.json``) built as LibCity documents them, through import, ``train --epochs 1``,
``evaluate`` and ``predict``; bad files end in one ``error:`` line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.data.test_import_common import check_round_trip, train_evaluate_predict, user_error
from trafficcast.app.cli import main
from trafficcast.data import read_sensor_locations, read_speeds
from trafficcast.graph import load_adjacency, read_distances

# geo_id: (longitude, latitude), GeoJSON order.
POINTS = {
    "773869": (-118.31829, 34.15497),
    "767541": (-118.23799, 34.11621),
    "767542": (-118.23819, 34.11641),
    "717447": (-118.26979, 34.07248),
}
STEPS = 576


def speeds() -> np.ndarray:
    """Two days of 5-minute speeds, one column per point.

    Shapes:
        returns (STEPS, len(POINTS)), one decimal.
    """
    rng = np.random.default_rng(5)
    hour = (np.arange(STEPS) * 5 / 60) % 24
    dip = 28.0 * np.exp(-((hour - 17.5) ** 2) / 2.5)[:, None]
    return np.round(64.0 - dip + rng.normal(0, 1.5, (STEPS, len(POINTS))), 1)


def write_libcity(root, *, info: dict | None = None, rel_costs=(1380.2, 2210.9, 150.7)) -> dict:
    """``METR_LA_TINY.geo/.rel/.dyna`` and ``config.json`` in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    ids = list(POINTS)
    geo = ["geo_id,type,coordinates"]
    geo += [f'{sid},Point,"[{lon}, {lat}]"' for sid, (lon, lat) in POINTS.items()]
    (root / "METR_LA_TINY.geo").write_text("\n".join(geo) + "\n")
    rel = ["rel_id,type,origin_id,destination_id,cost"]
    pairs = [(ids[0], ids[1]), (ids[1], ids[2]), (ids[2], ids[3])]
    rel += [
        f"{k},geo,{a},{b},{c}" for k, ((a, b), c) in enumerate(zip(pairs, rel_costs, strict=True))
    ]
    (root / "METR_LA_TINY.rel").write_text("\n".join(rel) + "\n")
    values = speeds()
    stamps = pd.date_range("2012-03-01", periods=STEPS, freq="5min")
    dyna = ["dyna_id,type,time,entity_id,traffic_speed"]
    k = 0
    for j, sid in enumerate(ids):  # LibCity writes one entity's series after another
        for t, stamp in enumerate(stamps):
            value = "" if (t, j) == (40, 2) else f"{values[t, j]}"
            dyna.append(f"{k},state,{stamp:%Y-%m-%dT%H:%M:%SZ},{sid},{value}")
            k += 1
    (root / "METR_LA_TINY.dyna").write_text("\n".join(dyna) + "\n")
    config = {
        "geo": {"including_types": ["Point"], "Point": {}},
        "rel": {"including_types": ["geo"], "geo": {"cost": "num"}},
        "dyna": {
            "including_types": ["state"],
            "state": {"entity_id": "geo_id", "traffic_speed": "num"},
        },
        "info": info
        if info is not None
        else {
            "data_col": ["traffic_speed"],
            "weight_col": "cost",
            "data_files": ["METR_LA_TINY"],
            "geo_file": "METR_LA_TINY",
            "rel_file": "METR_LA_TINY",
            "output_dim": 1,
            "time_intervals": 300,
            "init_weight_inf_or_zero": "inf",
            "set_weight_link_or_dist": "dist",
            "calculate_weight_adj": True,
            "weight_adj_epsilon": 0.1,
        },
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return {kind: root / f"METR_LA_TINY.{kind}" for kind in ("geo", "rel", "dyna")}


def test_libcity_distances_import_train_evaluate_predict(tmp_path, capsys):
    root = tmp_path / "METR_LA_TINY"
    write_libcity(root)
    out = tmp_path / "out"
    assert main(["import", "libcity", "--dir", str(root), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "imported libcity: speed, 4 sensors x 576 steps of 5 min" in printed
    assert "note: column traffic_speed; .rel cost read as distance" in printed

    data = read_speeds(out / "speeds.h5")
    assert data.sensor_ids == list(POINTS)
    assert data.index[0] == pd.Timestamp("2012-03-01")
    expected = speeds().astype(np.float32)
    assert not data.mask[40, 2] and int((~data.mask).sum()) == 1
    np.testing.assert_array_equal(data.values[data.mask], expected[data.mask])
    assert read_distances(out / "distances.csv").to_dict("list") == {
        "from": ["773869", "767541", "767542"],
        "to": ["767541", "767542", "717447"],
        "cost": [1380.2, 2210.9, 150.7],
    }
    locations = read_sensor_locations(out / "locations.csv")
    assert locations.iloc[0].tolist() == ["773869", 34.15497, -118.31829]

    at = "2012-03-02T17:00"
    trained = train_evaluate_predict(
        tmp_path, out / "speeds.h5", ("--distances", out / "distances.csv"), at, capsys
    )
    check_round_trip(trained, len(POINTS), at)


def test_libcity_weights_become_the_adjacency_and_train(tmp_path, capsys):
    info = {"data_col": ["traffic_speed"], "set_weight_link_or_dist": "dist",
            "calculate_weight_adj": False, "time_intervals": 300}  # fmt: skip
    files = write_libcity(tmp_path / "in", info=info, rel_costs=(0.9, 0.45, 0.7))
    out = tmp_path / "out"
    argv = ["import", "libcity", "--geo", str(files["geo"]), "--rel", str(files["rel"])]
    argv += ["--dyna", str(files["dyna"]), "--config", str(tmp_path / "in" / "config.json")]
    assert main([*argv, "--output-dir", str(out)]) == 0
    ids, adj = load_adjacency(out / "adjacency.npz")
    assert ids == list(POINTS)
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 1], expected[1, 2], expected[2, 3] = 0.9, 0.45, 0.7
    np.testing.assert_array_equal(adj, expected)
    assert not (out / "distances.csv").exists()

    at = "2012-03-02T08:00"
    trained = train_evaluate_predict(
        tmp_path, out / "speeds.h5", ("--adjacency", out / "adjacency.npz"), at, capsys
    )
    check_round_trip(trained, len(POINTS), at)


def test_libcity_link_edges_weigh_one_and_empty_coordinates_are_no_location(tmp_path):
    from trafficcast.data.importers import import_libcity

    files = write_libcity(tmp_path, info={"set_weight_link_or_dist": "link"})
    geo = files["geo"].read_text()
    files["geo"].write_text(geo.replace('"[-118.23799, 34.11621]"', '"[]"'))
    result = import_libcity(
        files["geo"], files["rel"], files["dyna"], config=tmp_path / "config.json"
    )
    assert result.adjacency[0, 1] == 1.0 and result.adjacency.sum() == 3.0
    assert result.data.sensor_ids == list(POINTS)
    assert result.locations["sensor_id"].tolist() == ["773869", "767542", "717447"]
    assert "1 sensors have no coordinates" in result.notes


def _mangle_dyna(files, old: str, new: str) -> None:
    text = files["dyna"].read_text()
    assert old in text
    files["dyna"].write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("2012-03-01T00:05:00Z,773869,", "2012-03-01T00:05:00Z,773869,1,", "cannot parse (Error tokenizing data. C error: Expected 5 fields in line 3, saw 6)"),
        ("2012-03-01T00:05:00Z", "March 1st 2012", "line 3: cannot read time 'March 1st 2012' (expected ISO 8601, e.g. 2012-03-01T00:00:00Z)"),
        (",773869,", ",999999,", "line 2: entity_id '999999' is not a geo_id of {geo}"),
        ("traffic_speed", "traffic_flow", "no column 'traffic_speed' (data columns: traffic_flow)"),
        ("2012-03-01T00:05:00Z,773869", "2012-03-01T00:00:00Z,773869", "line 3: a second reading of 773869 at 2012-03-01 00:00:00"),
    ],
)  # fmt: skip
def test_libcity_bad_dyna_is_one_error_line(tmp_path, capsys, old, new, message):
    root = tmp_path / "in"
    files = write_libcity(root)
    _mangle_dyna(files, old, new)
    line = user_error(
        ["import", "libcity", "--dir", str(root), "--output-dir", str(tmp_path / "o")], capsys
    )
    assert line == f"error: {files['dyna']}: " + message.format(geo=files["geo"])


def test_libcity_bad_geo_rel_and_arguments_are_one_error_line(tmp_path, capsys):
    root = tmp_path / "in"
    files = write_libcity(root)
    argv = ["import", "libcity", "--dir", str(root), "--output-dir", str(tmp_path / "o")]
    geo = files["geo"].read_text()
    files["geo"].write_text(geo.replace("[-118.31829, 34.15497]", "[34.15497]"))
    line = user_error(argv, capsys)
    assert (
        line
        == f"error: {files['geo']}: line 2: coordinates '[34.15497]' are not [longitude, latitude]"
    )

    files["geo"].write_text(geo)
    files["rel"].write_text(files["rel"].read_text().replace(",717447,", ",717448,"))
    line = user_error(argv, capsys)
    assert line == f"error: {files['rel']}: line 4: destination_id '717448' is not a geo_id"

    line = user_error([*argv, "--column", "traffic_flow"], capsys)
    assert line == f"error: {files['dyna']}: no column 'traffic_flow' (data columns: traffic_speed)"
    line = user_error(
        ["import", "libcity", "--geo", str(files["geo"]), "--output-dir", "o"], capsys
    )
    assert line == "error: give --dir, or all of --geo, --rel and --dyna (--rel is missing)"
    (root / "copy.dyna").write_text(files["dyna"].read_text())
    line = user_error(argv, capsys)
    assert line == f"error: {root}: 2 .dyna files; expected one (or give --geo, --rel and --dyna)"


def _with_zeros_and_flow(files: dict) -> np.ndarray:
    """Rewrite the ``.dyna`` with a ``traffic_flow`` column after the speed, speed 0 at three
    readings (LibCity's METR_LA writes a missing speed so) and flow 0 at two.

    Returns:
        the flows written, (STEPS, len(POINTS)).
    """
    lines = files["dyna"].read_text().splitlines()
    flows = np.arange(STEPS * len(POINTS), dtype=np.float64).reshape(len(POINTS), STEPS).T % 97
    flows[[10, 11], [0, 1]] = 0.0
    zero_speed = {(100, 0), (101, 0), (300, 3)}
    out = [lines[0] + ",traffic_flow"]
    for k, line in enumerate(lines[1:]):
        j, t = divmod(k, STEPS)
        fields = line.split(",")
        if (t, j) in zero_speed:
            fields[4] = "0.0"
        out.append(",".join(fields) + f",{flows[t, j]:g}")
    files["dyna"].write_text("\n".join(out) + "\n")
    return flows


def test_libcity_zero_speeds_are_missing_and_zero_flows_readings(tmp_path, capsys):
    """Issue 24 item 5: a 0 speed is missing by the speed rule (not a reading, empty in the file
    written, counted in missing_pct and in what was dropped); a 0 flow stays a reading."""
    root = tmp_path / "METR_LA_TINY"
    files = write_libcity(root)
    flows = _with_zeros_and_flow(files)
    out = tmp_path / "out"
    assert main(["import", "libcity", "--dir", str(root), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 readings of 0 traffic_speed (missing under the zero rule)" in printed
    assert "note: missing-value rule zero for speed: a 0 is missing" in printed
    frame = pd.read_hdf(out / "speeds.h5", "df")
    written = frame.to_numpy()
    for t, j in ((100, 0), (101, 0), (300, 3), (40, 2)):
        assert np.isnan(written[t, j])
    assert int(np.isnan(written).sum()) == 4 and not (written == 0).any()
    summary = json.loads((out / "import.json").read_text())
    assert summary["dropped"]["readings of 0 traffic_speed (missing under the zero rule)"] == 3
    assert summary["missing_pct"] == round(100 * 4 / (STEPS * len(POINTS)), 4)

    flow_out = tmp_path / "flow"
    argv = ["import", "libcity", "--dir", str(root), "--column", "traffic_flow"]
    assert main([*argv, "--output-dir", str(flow_out)]) == 0
    printed = capsys.readouterr().out
    assert "note: missing-value rule nan for flow: a 0 is a reading" in printed
    written = pd.read_hdf(flow_out / "speeds.h5", "df").to_numpy()
    np.testing.assert_array_equal(written, flows)
    summary = json.loads((flow_out / "import.json").read_text())
    assert summary["missing_pct"] == 0.0
    assert summary["dropped"]["readings of 0 traffic_flow (missing under the nan rule)"] == 0


def test_libcity_data_col_given_as_a_string_is_the_column_read(tmp_path):
    """Issue 24 item 6: ``"data_col": "traffic_flow"`` (a string, as LibCity's metr_la.py
    writes it) picks that column, not the traffic_speed fallback."""
    from trafficcast.data.importers import import_libcity

    info = {"data_col": "traffic_flow", "set_weight_link_or_dist": "link", "time_intervals": 300}
    files = write_libcity(tmp_path, info=info)
    flows = _with_zeros_and_flow(files)
    result = import_libcity(
        files["geo"], files["rel"], files["dyna"], config=tmp_path / "config.json"
    )
    assert result.quantity == "flow"
    assert result.notes[0] == "column traffic_flow; .rel cost read as weight"
    np.testing.assert_array_equal(result.data.values, flows.astype(np.float32))
