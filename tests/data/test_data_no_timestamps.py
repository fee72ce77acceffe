"""Files without timestamps (the T-GCN / STGCN layout) and the missing-value rule of the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trafficcast.data import DataInputError, read_speeds, write_speeds


def _write(tmp_path, text: str, name: str = "speeds.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_id_header_and_no_timestamps_read_with_start_and_freq(tmp_path):
    path = _write(tmp_path, "773869,767541\n64.375,67.625\n62.667,0\n,68.5\n")
    speeds = read_speeds(path, start="2012-03-01 00:00", freq_minutes=15)
    assert speeds.sensor_ids == ["773869", "767541"]
    assert speeds.freq_minutes == 15
    assert list(speeds.index) == list(
        pd.to_datetime(["2012-03-01 00:00", "2012-03-01 00:15", "2012-03-01 00:30"])
    )
    np.testing.assert_array_equal(
        speeds.values, np.array([[64.375, 67.625], [62.667, 0.0], [0.0, 68.5]], np.float32)
    )
    # METR-LA's rule by default: 0 and empty are missing.
    assert speeds.mask.tolist() == [[True, True], [True, False], [False, True]]


def test_headerless_file_gets_sensor_ids_in_column_order(tmp_path):
    path = _write(tmp_path, "64.375,67.625,60\n62.5,61,59.25\n")
    speeds = read_speeds(path, start="2012-03-01", freq_minutes=5)
    assert speeds.sensor_ids == ["0", "1", "2"]
    assert speeds.num_steps == 2
    assert speeds.values[0].tolist() == [64.375, 67.625, 60.0]


@pytest.mark.parametrize(
    ("text", "ids", "steps"),
    [
        # Whole-number ids above every reading: a header even though the readings are whole.
        ("400001,400017\n12,0\n30,7\n", ["400001", "400017"], 2),
        # Small ids, fractional readings: whole numbers where the readings have fractions.
        ("3,1,2\n50.5,51.25,49\n48,47.5,46\n", ["3", "1", "2"], 2),
        # 0 .. N-1 over whole readings: the usual ids of an exported matrix.
        ("0,1,2\n5,9,2\n7,3,1\n", ["0", "1", "2"], 2),
        # A first row of whole readings inside the readings' range: readings, no header.
        ("12,0,4\n30,7,2\n5,9,31\n", ["0", "1", "2"], 3),
        # Repeated values cannot be ids.
        ("900,900\n1.5,2.5\n", ["0", "1"], 2),
        # A gap in the first row is a missing reading, not a header.
        (",61.5\n1.5,2.5\n", ["0", "1"], 2),
    ],
)
def test_numeric_header_is_told_from_a_first_row_of_readings(tmp_path, text, ids, steps):
    speeds = read_speeds(_write(tmp_path, text), start="2012-03-01", freq_minutes=5, missing="nan")
    assert speeds.sensor_ids == ids
    assert speeds.num_steps == steps


def test_flow_zeros_are_readings_under_the_nan_rule(tmp_path):
    path = _write(tmp_path, "a,b\n0,4\n,0\n3,nan\n")
    flows = read_speeds(path, start="2012-03-01", freq_minutes=5, missing="nan")
    assert flows.mask.tolist() == [[True, True], [False, True], [True, False]]
    assert flows.missing == "nan"
    assert flows.summary()["missing_pct"] == pytest.approx(100 * 2 / 6)
    speeds = read_speeds(path, start="2012-03-01", freq_minutes=5)
    assert speeds.mask.tolist() == [[False, True], [False, False], [True, False]]


def test_write_keeps_real_zeros_under_the_nan_rule(tmp_path):
    source = _write(tmp_path, "t,a,b\n2012-03-01 00:00,0,4\n2012-03-01 00:05,,0\n")
    flows = read_speeds(source, missing="nan")
    out = tmp_path / "out.h5"
    write_speeds(flows, out)
    back = read_speeds(out, missing="nan")
    assert back.mask.tolist() == flows.mask.tolist() == [[True, True], [False, True]]
    np.testing.assert_array_equal(back.values, flows.values)


def test_selections_keep_the_rule(tmp_path):
    path = _write(tmp_path, "a,b\n0,4\n1,0\n")
    flows = read_speeds(path, start="2012-03-01", freq_minutes=5, missing="nan")
    assert flows.select_sensors(["b"]).missing == "nan"
    assert flows.slice_steps(0, 1).missing == "nan"


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        # No timestamps and no --start: the error names both flags.
        ("1,2\n50,60\n", {}, r"cannot read timestamp '50'.*--start TIMESTAMP and --freq"),
        ("50,60\n51,61\n", {}, r"--start TIMESTAMP and --freq"),
        ("1,2\n50,60\n", {"start": "2012-03-01"}, r"--start needs --freq"),
        ("1,2\n50,60\n", {"start": "not a time", "freq_minutes": 5}, "--start 'not a time'"),
        (
            "t,1\n2012-03-01 00:00,50\n",
            {"start": "2012-03-01", "freq_minutes": 5},
            "has timestamps .*leave out --start and --freq",
        ),
        ("1,2\n50,60\n50,60,70\n", {"start": "2012-03-01", "freq_minutes": 5}, "line 3 has more"),
        ("1,2\n50,x\n", {"start": "2012-03-01", "freq_minutes": 5}, "non-numeric value 'x'"),
        ("1,2\n50,60\n", {"start": "2012-03-01", "freq_minutes": 0}, "positive whole number"),
    ],
)
def test_bad_files_without_timestamps_are_one_line_errors(tmp_path, text, kwargs, message):
    path = _write(tmp_path, text)
    with pytest.raises(DataInputError, match=message) as info:
        read_speeds(path, **kwargs)
    assert "\n" not in str(info.value)


def test_an_unknown_missing_rule_is_refused(tmp_path):
    path = _write(tmp_path, "t,1\n2012-03-01 00:00,50\n2012-03-01 00:05,50\n")
    with pytest.raises(DataInputError, match="'blank' is not one of zero, nan"):
        read_speeds(path, missing="blank")


def test_hdf_with_a_plain_index_reads_with_start(tmp_path):
    path = tmp_path / "plain.h5"
    pd.DataFrame({"7": [1.0, 0.0], "9": [2.0, 3.0]}).to_hdf(path, key="df")
    speeds = read_speeds(path, start="2012-03-01 06:00", freq_minutes=15, missing="nan")
    assert speeds.index[-1] == pd.Timestamp("2012-03-01 06:15")
    assert speeds.mask.tolist() == [[True, True], [True, True]]
