"""Weekdays-only releases (issue 24 item 8): PeMSD7(M)'s ``V_228.csv`` holds 44 weekdays of 288
five-minute rows, one day after another, without timestamps. Under ``--calendar weekdays`` the
rows are dated Monday to Friday, the weekends are rows of missing readings, and no window spans
them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trafficcast.app.cli import main
from trafficcast.data import DataInputError, off_calendar, read_speeds, split_windows
from trafficcast.data.calendar import Calendar, parse_calendar
from trafficcast.data.windows import window_starts

DAYS = 10
PER_DAY = 288
SENSORS = 3
# Ten weekdays from Monday 7 May 2012 (PeMSD7(M)'s own period is May and June 2012).
DATES = [
    pd.Timestamp("2012-05-07") + pd.Timedelta(days=d) for d in (0, 1, 2, 3, 4, 7, 8, 9, 10, 11)
]


def weekday_file(path, days: int = DAYS) -> np.ndarray:
    """A headerless speeds CSV of ``days`` weekdays (the STGCN layout); row ``k`` of day ``d``
    holds ``60 + d + k / 1000`` at every sensor, so a row's value says which it is.

    Returns:
        the values written, (days * PER_DAY, SENSORS).
    """
    day = np.repeat(np.arange(days), PER_DAY)
    slot = np.tile(np.arange(PER_DAY), days)
    values = np.repeat((60 + day + slot / 1000)[:, None], SENSORS, axis=1)
    np.savetxt(path, values, delimiter=",", fmt="%.3f")
    return values


def test_ten_weekdays_get_their_dates_and_no_window_spans_the_weekend(tmp_path):
    path = tmp_path / "V_10.csv"
    written = weekday_file(path)
    speeds = read_speeds(path, start="2012-05-07", freq_minutes=5, calendar="weekdays")
    assert speeds.calendar == "weekdays"
    # The grid runs Monday 7 May 00:00 to Friday 18 May 23:55; the weekend is 576 missing rows.
    assert speeds.index[0] == pd.Timestamp("2012-05-07 00:00")
    assert speeds.index[-1] == pd.Timestamp("2012-05-18 23:55")
    assert speeds.num_steps == DAYS * PER_DAY + 2 * PER_DAY
    weekend = np.asarray(speeds.index.day_of_week) >= 5
    assert int(weekend.sum()) == 2 * PER_DAY
    assert not speeds.mask[weekend].any()
    # Every row of the file is on its weekday, in order: day d's row k at DATES[d] + 5k min.
    rows = np.flatnonzero(~weekend)
    assert len(rows) == DAYS * PER_DAY
    expected = pd.DatetimeIndex(
        [date + pd.Timedelta(minutes=5 * k) for date in DATES for k in range(PER_DAY)]
    )
    assert speeds.index[rows].equals(expected)
    np.testing.assert_array_equal(speeds.values[rows], written.astype(np.float32))
    assert sorted({d.date() for d in speeds.index[rows]}) == [d.date() for d in DATES]
    assert set(speeds.index[rows].day_name()) == {
        "Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
    }  # fmt: skip

    skip = off_calendar(speeds.index, speeds.calendar)
    splits = split_windows(speeds.num_steps, 12, 12, skip=skip)
    starts = np.concatenate([splits["train"], splits["val"], splits["test"]])
    # Each week gives 1,440 - 23 windows; none starts in one week and ends in the next.
    assert len(starts) == 2 * (5 * PER_DAY - 23) == 2834
    first, last = speeds.index[starts], speeds.index[starts + 23]
    assert ((last - first) == pd.Timedelta(minutes=5 * 23)).all()
    rows_of = starts[:, None] + np.arange(24)
    assert not weekend[rows_of].any()
    assert (first[1:] > first[:-1]).all()
    # The split is DCRNN's over the windows that remain.
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1984, 283, 567]
    # Without the calendar, the same rows would run on into Saturday.
    plain = read_speeds(path, start="2012-05-07", freq_minutes=5)
    assert plain.index[5 * PER_DAY] == pd.Timestamp("2012-05-12")


def test_holidays_are_left_out_and_a_weekend_start_is_refused(tmp_path):
    path = tmp_path / "V_3.csv"
    weekday_file(path, days=3)
    # Friday 25 May, (Memorial Day, Monday 28 May, left out), Tuesday 29, Wednesday 30.
    speeds = read_speeds(path, start="2012-05-25", freq_minutes=5, calendar="weekdays:2012-05-28")
    assert speeds.calendar == "weekdays:2012-05-28"
    observed_days = sorted({t.date().isoformat() for t in speeds.index[speeds.mask.any(axis=1)]})
    assert observed_days == ["2012-05-25", "2012-05-29", "2012-05-30"]
    skip = off_calendar(speeds.index, speeds.calendar)
    assert int(skip.sum()) == 3 * PER_DAY  # Saturday, Sunday, Monday
    assert len(window_starts(speeds.num_steps, 12, 12, skip)) == PER_DAY - 23 + 2 * PER_DAY - 23

    with pytest.raises(DataInputError, match="2012-05-26 00:00:00 is a Saturday or holiday"):
        read_speeds(path, start="2012-05-26", freq_minutes=5, calendar="weekdays")
    with pytest.raises(DataInputError, match="use all or weekdays"):
        read_speeds(path, start="2012-05-25", freq_minutes=5, calendar="workdays")
    with pytest.raises(DataInputError, match="holiday 'May 28' is not a date"):
        parse_calendar("weekdays:May 28")
    assert parse_calendar(None) == Calendar() and parse_calendar("all").spec == "all"


def test_timestamped_copy_read_under_the_calendar_keeps_the_windows(tmp_path):
    """A weekdays-only table written with its timestamps (weekend rows empty) and read again with
    --calendar weekdays gives the same windows, with no gap warning for the weekend."""
    import warnings

    path = tmp_path / "V_10.csv"
    weekday_file(path)
    speeds = read_speeds(path, start="2012-05-07", freq_minutes=5, calendar="weekdays")
    rows = speeds.mask.any(axis=1)
    frame = speeds.to_frame()[rows]
    frame.index.name = "timestamp"
    frame.to_csv(tmp_path / "dated.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = read_speeds(tmp_path / "dated.csv", calendar="weekdays")
    assert again.index.equals(speeds.index)
    skip = off_calendar(again.index, again.calendar)
    assert len(window_starts(again.num_steps, 12, 12, skip)) == 2834
    # Without the calendar the weekend is a gap, with its warning, and windows span it.
    with pytest.warns(UserWarning, match="576 missing timestamps"):
        plain = read_speeds(tmp_path / "dated.csv")
    assert off_calendar(plain.index, plain.calendar) is None


def test_summary_train_and_evaluate_under_the_weekdays_calendar(tmp_path, capsys):
    path = tmp_path / "V_10.csv"
    weekday_file(path)
    timing = ["--start", "2012-05-07", "--freq", "5min", "--calendar", "weekdays"]
    assert main(["summary", "--data", str(path), *timing]) == 0
    printed = capsys.readouterr().out
    assert "period:          2012-05-07T00:00:00 to 2012-05-18T23:55:00" in printed
    assert "windows (12/12): 2834" in printed
    # The weekend rows are off the calendar, not missing readings.
    assert "missing:         0.00%" in printed
    assert "split:           train 1984, val 283, test 567" in printed

    adj = np.array([[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]])
    np.savetxt(tmp_path / "adj.csv", adj, delimiter=",")
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n  rnn_units: 4\n  num_rnn_layers: 1\nbaselines:\n  fc_lstm: false\n")
    run = tmp_path / "run"
    argv = ["train", "--data", str(path), *timing, "--adjacency", str(tmp_path / "adj.csv")]
    argv += ["--config", str(config), "--epochs", "1", "--no-progress", "--output", str(run)]
    assert main(argv) == 0
    capsys.readouterr()
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == {"train": 1984, "val": 283, "test": 567}
    # The run remembers the calendar: evaluate without --data dates the file the same way.
    assert main(["evaluate", "--run", str(run), "--output", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["split"] == report["split"]
    assert again["metrics"] == report["metrics"]
