"""``trafficcast import largest``: a LargeST flow table (pandas HDF, timestamps by sensor id) and
``ca_meta.csv``, built as released, through import and a one-epoch training run; bad files end
in one ``error:`` line.

LargeST holds flow only: the table written keeps real zeros as readings and missing ones empty,
and the run trains with ``data.quantity: flow`` (missing: only empty), as the import advises."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.data.test_import_common import check_round_trip, train_evaluate_predict, user_error
from trafficcast.app.cli import main
from trafficcast.data import read_sensor_locations

META_HEADER = "ID,Lat,Lng,District,County,Fwy,Lanes,Type,Direction,ID2"
# (id, latitude, longitude, district): three in district 4 (GBA), two in 11 (SD), one in 7.
SENSORS = [
    (400001, 37.3645, -121.9012, 4),
    (400017, 37.2532, -121.8775, 4),
    (400030, 37.3596, -121.9069, 4),
    (1100115, 32.7641, -117.1523, 11),
    (1100120, 32.7713, -117.1481, 11),
    (716928, 34.0563, -118.2303, 7),
]
STEPS = 576


def flows() -> pd.DataFrame:
    """Two days of 5-minute flow, one column per sensor id (ints, as LargeST stores them)."""
    rng = np.random.default_rng(3)
    index = pd.date_range("2019-01-01", periods=STEPS, freq="5min")
    hour = index.hour + index.minute / 60
    busy = np.exp(-((np.asarray(hour) - 17.0) ** 2) / 4.0)[:, None]
    values = np.round(40 + 300 * busy + rng.normal(0, 8, (STEPS, len(SENSORS))))
    frame = pd.DataFrame(values, index=index, columns=[s[0] for s in SENSORS])
    frame.iloc[5, 1] = np.nan
    frame.iloc[6, 0] = 0.0  # a real zero flow: stays a reading through the import
    return frame


def write_largest(root, frame: pd.DataFrame | None = None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (frame if frame is not None else flows()).to_hdf(root / "ca_his_raw_2019.h5", key="t")
    rows = [META_HEADER]
    for k, (sid, lat, lng, district) in enumerate(SENSORS):
        rows.append(f"{sid},{lat},{lng},{district},Santa Clara,101,4,Mainline,N,{k}")
    (root / "ca_meta.csv").write_text("\n".join(rows) + "\n")
    return {"hdf": root / "ca_his_raw_2019.h5", "meta": root / "ca_meta.csv"}


def _argv(files: dict, out, *extra: str) -> list[str]:
    argv = ["import", "largest", "--hdf", str(files["hdf"]), "--meta", str(files["meta"])]
    return [*argv, *extra, "--output-dir", str(out)]


def test_largest_district_import_and_training_run(tmp_path, capsys):
    files = write_largest(tmp_path / "largest")
    out = tmp_path / "out"
    assert main(_argv(files, out, "--district", "4")) == 0
    printed = capsys.readouterr().out
    assert "imported largest: flow, 3 sensors x 576 steps of 5 min" in printed
    assert "data: {quantity: flow, missing: nan}" in printed

    frame = pd.read_hdf(out / "speeds.h5", "df")
    assert frame.columns.tolist() == ["400001", "400017", "400030"]
    expected = flows()
    np.testing.assert_array_equal(frame.to_numpy(), expected.iloc[:, :3].to_numpy())
    locations = read_sensor_locations(out / "locations.csv")
    assert locations.to_dict("list") == {
        "sensor_id": ["400001", "400017", "400030"],
        "latitude": [37.3645, 37.2532, 37.3596],
        "longitude": [-121.9012, -121.8775, -121.9069],
    }
    summary = json.loads((out / "import.json").read_text())
    assert summary["read"] == {
        "rows": 576,
        "sensors in the table": 6,
        "sensors in the metadata": 6,
    }
    assert summary["dropped"]["readings missing (empty)"] == 1

    distances = out / "distances.csv"
    argv = ["distances", "--straight-line", "--sensors", str(out / "locations.csv")]
    assert main([*argv, "--output", str(distances)]) == 0
    at = "2019-01-02T16:00"
    trained = train_evaluate_predict(
        tmp_path, out / "speeds.h5", ("--distances", distances), at, capsys, quantity="flow"
    )
    check_round_trip(trained, 3, at)
    data = trained["report"]["data"]
    assert (data["quantity"], data["missing"]) == ("flow", "nan")


def test_largest_first_n_sensors_of_several_districts(tmp_path, capsys):
    files = write_largest(tmp_path / "largest")
    out = tmp_path / "out"
    assert main(_argv(files, out, "--district", "4,11", "--sensors", "4")) == 0
    frame = pd.read_hdf(out / "speeds.h5", "df")
    assert frame.columns.tolist() == ["400001", "400017", "400030", "1100115"]


def test_largest_bad_files_are_one_error_line(tmp_path, capsys):
    files = write_largest(tmp_path / "largest")
    line = user_error(_argv(files, tmp_path / "out", "--district", "12"), capsys)
    assert line == f"error: {files['meta']}: no sensor in district 12 is a column of {files['hdf']}"

    meta = files["meta"].read_text()
    files["meta"].write_text(meta.replace("37.2532", "north", 1))
    line = user_error(_argv(files, tmp_path / "out"), capsys)
    assert line == f"error: {files['meta']}: line 3: Lat 'north' is not a number"

    files["meta"].write_text(meta)
    flows().to_hdf(files["hdf"], key="extra")
    line = user_error(_argv(files, tmp_path / "out"), capsys)
    assert line == f"error: {files['hdf']}: give --key: the file holds extra, t"
    assert main(_argv(files, tmp_path / "out", "--key", "t")) == 0

    files["hdf"].write_text("not an HDF file")
    line = user_error(_argv(files, tmp_path / "out"), capsys)
    assert line == f"error: {files['hdf']}: not a readable HDF5 file"


@pytest.mark.parametrize("index", [["yesterday"] * STEPS, list(range(STEPS))])
def test_largest_index_that_is_not_timestamps_is_one_error_line(tmp_path, capsys, index):
    frame = flows()
    frame.index = pd.Index(index)
    files = write_largest(tmp_path / "largest", frame)
    line = user_error(_argv(files, tmp_path / "out"), capsys)
    assert line.startswith(f"error: {files['hdf']}: cannot read timestamp ")


def test_largest_district_reads_only_its_columns_within_twice_their_size(tmp_path):
    """Issue 24 item 7: a district of 40 sensors out of 1,000 is imported holding at most twice
    the selected readings (float64) plus 2 MiB, where reading the whole table first would take
    25 times them (measured with tracemalloc, which sees numpy's buffers)."""
    import tracemalloc

    import tables  # noqa: F401  (imported before measuring: its import is not the read)

    from trafficcast.data.importers import import_largest

    num_sensors, steps, every = 1000, 4032, 25
    ids = np.arange(400000, 400000 + num_sensors)
    rng = np.random.default_rng(11)
    values = np.round(rng.random((steps, num_sensors)) * 400)
    values[rng.random(values.shape) < 0.01] = np.nan
    index = pd.date_range("2019-01-01", periods=steps, freq="5min")
    pd.DataFrame(values, index=index, columns=ids).to_hdf(tmp_path / "big.h5", key="t")
    district = np.where(np.arange(num_sensors) % every == 0, 4, 7)
    rows = ["ID,Lat,Lng,District"] + [
        f"{sid},37.0,-121.9,{d}" for sid, d in zip(ids, district, strict=True)
    ]
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    chosen = np.flatnonzero(district == 4)
    selected_bytes = steps * len(chosen) * 8
    del values
    expected = pd.read_hdf(tmp_path / "big.h5", "t").to_numpy()[:, chosen]

    tracemalloc.start()
    try:
        result = import_largest(tmp_path / "big.h5", tmp_path / "meta.csv", districts=["4"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.data.sensor_ids == [str(s) for s in ids[chosen]]
    assert peak <= 2 * selected_bytes + (2 << 20), (peak, selected_bytes)
    observed = np.isfinite(expected)
    np.testing.assert_array_equal(result.data.mask, observed)
    np.testing.assert_array_equal(result.data.values[observed], expected[observed])


def test_largest_table_format_reads_as_the_fixed(tmp_path):
    """The same flows written in pandas' ``table`` layout import identically."""
    from trafficcast.data.importers import import_largest

    files = write_largest(tmp_path / "fixed")
    fixed = import_largest(files["hdf"], files["meta"], districts=["4", "11"])
    table = tmp_path / "table.h5"
    flows().to_hdf(table, key="t", format="table")
    read = import_largest(table, files["meta"], districts=["4", "11"])
    assert read.data.sensor_ids == fixed.data.sensor_ids == [str(s[0]) for s in SENSORS[:5]]
    np.testing.assert_array_equal(read.data.values, fixed.data.values)
    np.testing.assert_array_equal(read.data.mask, fixed.data.mask)


def test_largest_zero_filled_table_keeps_zeros_as_flows_with_a_warning(tmp_path, capsys):
    """LargeST's processed files fill missing readings with 0: by the flow rule they stay
    readings, and the import warns (a DataWarning and a note in import.json)."""
    from trafficcast.data.errors import DataWarning
    from trafficcast.data.importers import import_largest

    frame = flows()
    frame.iloc[5, 1] = 0.0  # the one missing reading, zero-filled
    files = write_largest(tmp_path / "largest", frame)
    out = tmp_path / "out"
    assert main(_argv(files, out, "--district", "4")) == 0
    printed = capsys.readouterr()
    assert "no empty reading but 2 zeros (0.12%)" in printed.out
    assert printed.err.startswith(f"warning: {files['hdf']} has no empty reading but 2 zeros")
    summary = json.loads((out / "import.json").read_text())
    assert summary["missing_pct"] == 0.0
    assert any("kept as readings" in note for note in summary["notes"])
    written = pd.read_hdf(out / "speeds.h5", "df").to_numpy()
    assert written[5, 1] == 0.0 and written[6, 0] == 0.0
    with pytest.warns(DataWarning, match="LargeST's processed files fill missing readings"):
        import_largest(files["hdf"], files["meta"], districts=["4"])
