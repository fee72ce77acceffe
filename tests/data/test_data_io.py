"""Speed readers and writers: the bundled METR-LA week in every format, and every bad input."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest

from trafficcast.data import DataInputError, DataWarning, SpeedData, read_speeds, write_speeds
from trafficcast.data.bundled import sample_sensor_ids_path, sample_speeds_path


@pytest.fixture(scope="module")
def week() -> SpeedData:
    return read_speeds(sample_speeds_path())


@pytest.fixture(scope="module")
def week_frame() -> pd.DataFrame:
    return pd.read_hdf(sample_speeds_path(), "df")


def _same(a: SpeedData, b: SpeedData) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.sensor_ids == b.sensor_ids
    assert a.index.equals(b.index)
    assert a.freq_minutes == b.freq_minutes


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the bundled week ---


def test_bundled_week_loads_as_metr_la(week, week_frame):
    assert (week.num_steps, week.num_sensors) == (2016, 207)
    assert week.values.dtype == np.float32 and week.mask.dtype == bool
    assert week.freq_minutes == 5
    assert week.index[0] == pd.Timestamp("2012-03-01 00:00")
    assert week.index[-1] == pd.Timestamp("2012-03-07 23:55")
    assert week.sensor_ids[:3] == ["773869", "767541", "767542"]
    assert week.sensor_ids == sample_sensor_ids_path().read_text().strip().split(",")
    assert week.mask.all()  # the bundled week has no zeros
    np.testing.assert_allclose(week.values, week_frame.to_numpy(), rtol=1e-6)
    assert week.values[0, 0] == np.float32(week_frame.iloc[0, 0])


def test_bundled_week_identical_from_csv_and_parquet_written_by_pandas(tmp_path, week, week_frame):
    week_frame.to_csv(tmp_path / "w.csv")
    week_frame.to_parquet(tmp_path / "w.parquet")
    week_frame.reset_index().to_parquet(tmp_path / "first_col.parquet")
    for name in ("w.csv", "w.parquet", "first_col.parquet"):
        _same(read_speeds(tmp_path / name), week)


@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".csv", ".parquet"])
def test_write_speeds_round_trip_keeps_missing(tmp_path, week, suffix):
    data = week.slice_steps(0, 300)
    data.mask[5, 3] = False
    data.values[5, 3] = 0.0
    path = tmp_path / f"out{suffix}"
    write_speeds(data, path)
    back = read_speeds(path)
    _same(back, data)
    assert not back.mask[5, 3] and back.values[5, 3] == 0.0
    assert sorted(os.listdir(tmp_path)) == [f"out{suffix}"]  # no temp file left behind


def test_write_speeds_h5_has_key_df_float64(tmp_path, week):
    write_speeds(week.slice_steps(0, 10), tmp_path / "s.h5")
    frame = pd.read_hdf(tmp_path / "s.h5", "df")
    assert frame.shape == (10, 207) and frame.dtypes.iloc[0] == np.float64
    assert list(frame.columns[:2]) == ["773869", "767541"]


def test_write_speeds_replaces_existing_file(tmp_path, week):
    path = tmp_path / "s.csv"
    path.write_text("old")
    write_speeds(week.slice_steps(0, 30), path)
    assert read_speeds(path).num_steps == 30


def test_full_metr_la_layout_with_zeros_and_int_columns(tmp_path, week_frame):
    # The full METR-LA file: same layout, zeros = missing; some copies have integer column names.
    frame = week_frame.iloc[:100].copy()
    frame.iloc[10:20, 4] = 0.0
    frame.iloc[:, 7] = 0.0
    frame.iloc[3, 0] = np.nan
    frame.columns = [int(c) for c in frame.columns]
    frame.to_hdf(tmp_path / "metr-la.h5", key="df")
    with pytest.warns(DataWarning, match=r"1 sensor never observed.*767620"):
        data = read_speeds(tmp_path / "metr-la.h5")
    assert data.sensor_ids[:2] == ["773869", "767541"]
    assert not data.mask[10:20, 4].any() and data.mask[9, 4] and data.mask[20, 4]
    assert not data.mask[3, 0] and data.values[3, 0] == 0.0
    assert data.summary()["always_missing"] == ["767620"]
    assert data.summary()["missing_pct"] == pytest.approx(100 * (10 + 100 + 1) / (100 * 207))


def test_h5_other_keys_are_ignored(tmp_path, week_frame):
    path = tmp_path / "s.h5"
    week_frame.iloc[:30].to_hdf(path, key="df")
    pd.DataFrame({"a": [1]}).to_hdf(path, key="meta")
    assert read_speeds(path).num_steps == 30


# --- SpeedData methods ---


def test_select_slice_frame_summary(week):
    sub = week.select_sensors(["767541", "773869"])
    np.testing.assert_array_equal(sub.values, week.values[:, [1, 0]])
    assert sub.sensor_ids == ["767541", "773869"]
    part = week.slice_steps(288, 576)
    assert part.index[0] == pd.Timestamp("2012-03-02") and part.num_steps == 288
    np.testing.assert_array_equal(part.values, week.values[288:576])
    frame = week.to_frame()
    assert frame.shape == (2016, 207) and list(frame.columns[:1]) == ["773869"]
    assert frame.iloc[5, 2] == week.values[5, 2]
    facts = week.summary()
    assert facts == {
        "steps": 2016,
        "sensors": 207,
        "start": "2012-03-01T00:00:00",
        "end": "2012-03-07T23:55:00",
        "freq_minutes": 5,
        "missing_pct": 0.0,
        "always_missing": [],
    }


def test_select_unknown_sensor_is_named(week):
    with pytest.raises(DataInputError, match="sensor 999999 not in the data"):
        week.select_sensors(["773869", "999999"])


# --- irregular but usable input ---


def test_unsorted_gappy_csv_is_sorted_and_filled(tmp_path):
    path = _write(
        tmp_path,
        "s.csv",
        "timestamp,1,2\n"
        "2012-03-01 00:10:00,3,0\n"
        "2012-03-01 00:00:00,1,\n"
        "2012-03-01 00:05:00,2,NaN\n"
        "2012-03-01 00:25:00,4,5\n"
        "2012-03-01 00:40:00,6,7\n",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_speeds(path)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("sorted" in m for m in messages)
    assert any("4 missing timestamps (2 gaps) filled as missing" in m for m in messages)
    assert data.num_steps == 9 and data.freq_minutes == 5
    np.testing.assert_array_equal(data.values[:, 0], [1, 2, 3, 0, 0, 4, 0, 0, 6])
    np.testing.assert_array_equal(data.mask[:, 1], [0, 0, 0, 0, 0, 1, 0, 0, 1])


def test_timezone_aware_index_becomes_utc_naive(tmp_path):
    path = _write(tmp_path, "tz.csv", "t,1\n2012-03-01 00:00-08:00,1\n2012-03-01 00:05-08:00,2\n")
    data = read_speeds(path)
    assert data.index.tz is None
    assert data.index[0] == pd.Timestamp("2012-03-01 08:00")


def test_given_frequency_marks_gaps(tmp_path):
    path = _write(tmp_path, "s.csv", "t,1\n2012-03-01 00:00,1\n2012-03-01 00:10,2\n")
    with pytest.warns(DataWarning, match="1 missing timestamps"):
        data = read_speeds(path, freq_minutes=5)
    assert data.num_steps == 3 and not data.mask[1, 0]


# --- bad input: one-line errors naming the file and value ---

_ROW = "2012-03-01 00:00:00,1,2\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("t,1,2\n", "no rows"),
        ("t\n2012-03-01,\n", "no sensor columns"),
        ("t,1,2\n" + _ROW + "not-a-time,1,2\n", "cannot read timestamp 'not-a-time'"),
        ("t,1,2\n" + _ROW + ",1,2\n", "cannot read timestamp an empty value"),
        ("t,1,2\n1,1,2\n2,1,2\n", "cannot read timestamp '1'"),
        ("t,1,2\n" + _ROW + _ROW + _ROW, "duplicated timestamps 2012-03-01 00:00:00"),
        (
            "t,773869,2\n" + _ROW + "2012-03-01 00:05:00,abc,2\n",
            "non-numeric value 'abc' at 2012-03-01 00:05:00, sensor 773869",
        ),
        ("t,1,2\n" + _ROW + "2012-03-01 00:05:00,1,-4\n", "negative speed -4 at .*sensor 2"),
        ("t,1,2\n" + _ROW + "2012-03-01 00:05:00,inf,2\n", "infinite speed inf .*sensor 1"),
        ("t,1,1\n" + _ROW, "duplicate sensor column 1"),
        ("t,1,2\n" + _ROW + "2012-03-01 00:05:00,1,2,9\n", "more fields than the header"),
        (
            "t,1\n2012-03-01 00:00,1\n2012-03-01 00:05,1\n2012-03-01 00:10,1\n2012-03-01 00:12,1\n",
            "2012-03-01 00:12:00 is not on the 5-minute grid",
        ),
    ],
)
def test_bad_csv_raises_one_line_error_naming_file(tmp_path, text, message):
    path = _write(tmp_path, "speeds.csv", text)
    with pytest.raises(DataInputError, match=message) as info:
        read_speeds(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_h5_without_df_key_lists_keys(tmp_path):
    path = tmp_path / "s.h5"
    pd.DataFrame({"a": [1.0]}).to_hdf(path, key="speeds")
    with pytest.raises(DataInputError, match=r"no key 'df' in the HDF file \(keys: speeds\)"):
        read_speeds(path)


@pytest.mark.parametrize("name", ["junk.h5", "junk.parquet"])
def test_unreadable_binary_files(tmp_path, name):
    path = _write(tmp_path, name, "this is not binary data")
    with pytest.raises(DataInputError, match=r"not a readable (HDF5|Parquet) file") as info:
        read_speeds(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_speeds(tmp_path / "nope.csv")
    with pytest.raises(DataInputError, match=r"unknown speed file type '\.txt'"):
        read_speeds(_write(tmp_path, "s.txt", "x"))


def test_non_numeric_cell_in_h5_object_column(tmp_path):
    frame = pd.DataFrame(
        {"1": [1.0, 2.0], "2": ["3", "fast"]},
        index=pd.date_range("2012-03-01", periods=2, freq="5min"),
    ).astype({"2": object})
    frame.to_hdf(tmp_path / "s.h5", key="df")
    with pytest.raises(DataInputError, match="non-numeric value 'fast' at 2012-03-01 00:05:00"):
        read_speeds(tmp_path / "s.h5")
