"""``trafficcast import pems``: Caltrans PeMS station 5-minute files and station metadata, built
as the Clearinghouse documents them, through import, ``train --epochs 1``, ``evaluate`` and
``predict``; bad files end in one ``error:`` line."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from tests.data.test_import_common import check_round_trip, train_evaluate_predict, user_error
from trafficcast.app.cli import main
from trafficcast.data import read_sensor_locations, read_speeds
from trafficcast.data.importers import import_pems

META_HEADER = (
    "ID\tFwy\tDir\tDistrict\tCounty\tCity\tState_PM\tAbs_PM\tLatitude\tLongitude\tLength\t"
    "Type\tLanes\tName\tUser_ID_1\tUser_ID_2\tUser_ID_3\tUser_ID_4"
)
# station: (lane type, lanes, latitude, longitude); 400006 is not in the metadata.
STATIONS = {
    "400001": ("ML", 2, 37.3601, -121.9012),
    "400002": ("ML", 3, 37.3655, -121.9098),
    "400003": ("ML", 2, 37.3702, -121.9190),
    "400004": ("ML", 2, 37.3760, -121.9277),
    "400005": ("OR", 1, 37.3770, -121.9290),
    "400006": ("ML", 2, None, None),
}
DAYS = ("2024-03-04", "2024-03-05")
LOW_OBSERVED = ("400002", "2024-03-04 08:00")  # 20 % observed
EMPTY_SPEED = ("400003", "2024-03-04 10:00")
NOT_REPORTED = ("400004", "2024-03-05 12:00")


def speed_at(station: str, stamp: pd.Timestamp) -> float:
    """A morning dip, different per station, to one decimal as PeMS writes it."""
    hour = stamp.hour + stamp.minute / 60
    dip = 25.0 * np.exp(-((hour - 8.0) ** 2) / 2.0)
    return round(65.0 - dip - 0.7 * (int(station) % 10), 1)


def station_line(station: str, stamp: pd.Timestamp) -> str | None:
    lane_type, lanes, _, _ = STATIONS[station]
    key = (station, stamp.strftime("%Y-%m-%d %H:%M"))
    if key == NOT_REPORTED:
        return None
    speed = "" if key == EMPTY_SPEED else f"{speed_at(station, stamp):.1f}"
    observed = 20 if key == LOW_OBSERVED else 100
    flow = 50 + int(station) % 7
    fields = [
        stamp.strftime("%m/%d/%Y %H:%M:%S"), station, "4", "101", "N", lane_type, ".45",
        str(10 * lanes), str(observed), str(flow * lanes), ".0612", speed,
    ]  # fmt: skip
    for _ in range(lanes):  # samples, flow, avg occupancy, avg speed, observed
        fields += ["10", str(flow), ".0612", speed, "1"]
    return ",".join(fields)


def write_pems(root, *, day2_gzip: bool = True) -> dict:
    """Two day files (the second gzipped) and one metadata file, in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for day in DAYS:
        stamps = pd.date_range(day, periods=288, freq="5min")
        lines = [station_line(s, t) for t in stamps for s in STATIONS]
        text = "\n".join(line for line in lines if line is not None) + "\n"
        name = f"d04_text_station_5min_{day.replace('-', '_')}.txt"
        if day == DAYS[1] and day2_gzip:
            path = root / f"{name}.gz"
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path = root / name
            path.write_text(text)
        files.append(path)
    meta = root / "d04_text_meta_2024_03_01.txt"
    rows = [META_HEADER]
    for station, (lane_type, lanes, lat, lon) in STATIONS.items():
        if lat is None:
            continue
        rows.append(
            f"{station}\t101\tN\t4\t85\tSan Jose\t1.2\t390.1\t{lat}\t{lon}\t.45\t{lane_type}\t"
            f"{lanes}\tN 1ST ST\t{station}\t\t\t"
        )
    meta.write_text("\n".join(rows) + "\n")
    return {"files": files, "meta": meta}


@pytest.fixture
def pems(tmp_path):
    return write_pems(tmp_path / "pems")


def _import_argv(pems, out, *extra: str) -> list[str]:
    files = [str(f) for f in pems["files"]]
    argv = ["import", "pems", "--station-files", *files, "--meta", str(pems["meta"])]
    return [*argv, "--output-dir", str(out), *extra]


def test_pems_import_train_evaluate_predict(pems, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_import_argv(pems, out)) == 0
    printed = capsys.readouterr().out
    assert "imported pems: speed, 4 sensors x 576 steps of 5 min" in printed
    assert "1 stations of another lane type than ML" in printed
    assert "1 stations without coordinates in the metadata" in printed

    speeds = read_speeds(out / "speeds.h5")
    assert speeds.sensor_ids == ["400001", "400002", "400003", "400004"]
    assert speeds.index[0] == pd.Timestamp("2024-03-04") and speeds.num_steps == 576
    frame = pd.read_hdf(out / "speeds.h5", "df")
    stamp = pd.Timestamp("2024-03-05 07:35")
    assert frame.at[stamp, "400001"] == pytest.approx(speed_at("400001", stamp), abs=1e-5)
    for station, at in (LOW_OBSERVED, EMPTY_SPEED, NOT_REPORTED):
        assert np.isnan(frame.at[pd.Timestamp(at), station]), (station, at)
    assert int((~speeds.mask).sum()) == 3

    locations = read_sensor_locations(out / "locations.csv")
    assert locations["sensor_id"].tolist() == speeds.sensor_ids
    assert locations["latitude"].tolist() == [37.3601, 37.3655, 37.3702, 37.3760]
    summary = json.loads((out / "import.json").read_text())
    assert summary["read"] == {"files": 2, "rows": 2 * 288 * 6 - 1, "stations": 6}
    assert summary["dropped"]["readings below 50% observed"] == 1
    assert summary["dropped"]["readings with an empty speed"] == 1
    assert summary["config"] is None

    distances = out / "distances.csv"
    argv = ["distances", "--straight-line", "--sensors", str(out / "locations.csv")]
    assert main([*argv, "--output", str(distances)]) == 0
    at = "2024-03-05T09:00"
    trained = train_evaluate_predict(
        tmp_path, out / "speeds.h5", ("--distances", distances), at, capsys
    )
    check_round_trip(trained, 4, at)


def test_pems_flow_keeps_zeros_and_other_lane_types_on_request(pems):
    result = import_pems(
        pems["files"], [pems["meta"]], quantity="flow", lane_types=["ML", "OR"], min_observed=10
    )
    assert result.quantity == "flow"
    assert result.config_advice() == "data: {quantity: flow, missing: nan}"
    assert result.data.sensor_ids == ["400001", "400002", "400003", "400004", "400005"]
    # 20 % observed passes a 10 % bar; the empty speed does not touch the flow.
    at = result.data.index.get_loc(pd.Timestamp(LOW_OBSERVED[1]))
    assert result.data.mask[at, 1] and result.data.values[at, 1] == 3 * (50 + 400002 % 7)
    assert int((~result.data.mask).sum()) == 1  # only the interval 400004 did not report


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda text: text.replace(",1\n", ",1,7\n", 1), "line 1 has 23 fields; a station 5-minute row has 12 plus 5 per lane"),
        (lambda text: text.replace("03/04/2024 00:05:00", "2024-03-04T00:05", 1), "line 7: cannot read timestamp '2024-03-04T00:05' (expected MM/DD/YYYY HH:MM:SS)"),
        (lambda text: text.replace(",100,", ",all,", 1), "line 1: % observed is 'all', not a number"),
    ],
)  # fmt: skip
def test_pems_bad_station_file_is_one_error_line(tmp_path, capsys, mangle, message):
    pems = write_pems(tmp_path / "pems", day2_gzip=False)
    day1 = pems["files"][0]
    day1.write_text(mangle(day1.read_text()))
    line = user_error(_import_argv(pems, tmp_path / "out"), capsys)
    assert line == f"error: {day1}: {message}"
    assert not (tmp_path / "out" / "speeds.h5").exists()


def test_pems_bad_meta_and_repeated_day_are_one_error_line(pems, tmp_path, capsys):
    good_meta = pems["meta"].read_text()
    pems["meta"].write_text(good_meta.replace("Latitude", "Lat", 1))
    line = user_error(_import_argv(pems, tmp_path / "out"), capsys)
    assert line.startswith(f"error: {pems['meta']}: missing column 'Latitude'")

    pems["meta"].write_text(good_meta)
    pems["files"].append(pems["files"][0])
    line = user_error(_import_argv(pems, tmp_path / "out"), capsys)
    assert line == (
        f"error: {pems['files'][0]}: station 400001 at 2024-03-04 00:00:00 appears more than once "
        "(the same day given twice?)"
    )


def test_pems_comma_separated_metadata_reads_as_the_tab_separated(pems):
    """Issue 24 item 4: a comma-separated copy of the metadata (as other repositories republish
    it, a station name with a comma quoted) gives the same stations and coordinates."""
    from trafficcast.data.importers.pems import read_pems_meta

    tab = read_pems_meta([pems["meta"]])
    lines = pems["meta"].read_text().splitlines()
    rows = [",".join(cell for cell in line.split("\t")) for line in lines]
    # The Name column (14th) of the first station holds a comma, quoted as CSV writers do.
    first = rows[1].split(",")
    first[13] = '"N 1ST ST, SAN JOSE"'
    rows[1] = ",".join(first)
    comma = pems["meta"].with_name("d04_text_meta_comma.csv")
    comma.write_text("\n".join(rows) + "\n")
    read = read_pems_meta([comma])
    assert read["ID"].tolist() == ["400001", "400002", "400003", "400004", "400005"]
    pd.testing.assert_frame_equal(read, tab)
    result = import_pems(pems["files"], [comma])
    assert result.data.sensor_ids == ["400001", "400002", "400003", "400004"]
