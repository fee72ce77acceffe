"""The synthetic generator: determinism, formats, missing rate, graph, and upstream propagation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from trafficcast.data import DataInputError, make_synthetic, read_speeds, write_synthetic


@pytest.fixture(scope="module")
def small():
    return make_synthetic(num_sensors=50, num_days=7, seed=0)


def test_deterministic_for_a_seed(small):
    again = make_synthetic(num_sensors=50, num_days=7, seed=0)
    np.testing.assert_array_equal(small.speeds.values, again.speeds.values)
    np.testing.assert_array_equal(small.speeds.mask, again.speeds.mask)
    pd.testing.assert_frame_equal(small.distances, again.distances)
    pd.testing.assert_frame_equal(small.locations, again.locations)
    other = make_synthetic(num_sensors=50, num_days=7, seed=1)
    assert not np.array_equal(small.speeds.values, other.speeds.values)


def test_shapes_formats_and_ranges(small):
    speeds = small.speeds
    assert (speeds.num_steps, speeds.num_sensors) == (2016, 50)
    assert speeds.values.dtype == np.float32 and speeds.freq_minutes == 5
    assert speeds.index[0] == pd.Timestamp("2012-03-01") and speeds.index.freqstr == "5min"
    assert small.sensor_ids == speeds.sensor_ids and len(set(small.sensor_ids)) == 50
    assert all(isinstance(s, str) and len(s) == 6 for s in small.sensor_ids)
    observed = speeds.values[speeds.mask]
    assert observed.min() > 0 and observed.max() <= 80
    assert (speeds.values[~speeds.mask] == 0).all()
    assert 55 < np.median(observed) < 72  # mostly free flow
    assert observed.min() < 20  # and some heavy congestion
    assert list(small.distances.columns) == ["from", "to", "cost"]
    assert list(small.locations.columns) == ["sensor_id", "latitude", "longitude"]
    assert small.locations["sensor_id"].tolist() == small.sensor_ids
    assert small.locations["latitude"].between(33.0, 35.0).all()
    assert small.locations["longitude"].between(-119.5, -117.0).all()


def test_weekday_rush_hour_is_slower_than_night(small):
    speeds = small.speeds.to_frame().where(small.speeds.mask)
    weekdays = speeds[speeds.index.day_of_week < 5]
    rush = weekdays[weekdays.index.hour.isin([7, 8, 17, 18])].stack().mean()
    night = weekdays[weekdays.index.hour.isin([1, 2, 3])].stack().mean()
    assert night - rush > 5


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1])
def test_missing_fraction_near_missing_rate(rate):
    data = make_synthetic(num_sensors=100, num_days=3, seed=4, missing_rate=rate).speeds
    missing = 1.0 - data.mask.mean()
    assert missing == pytest.approx(rate, abs=max(0.1 * rate, 1e-9))


def test_outages_silence_a_sensor_for_a_while():
    mask = make_synthetic(num_sensors=100, num_days=3, seed=4, missing_rate=0.05).speeds.mask
    longest = 0
    for column in (~mask).T:
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, column.astype(int), 0])))[::2]
        longest = max(longest, runs.max(initial=0))
    assert 6 <= longest <= 2 * 24  # 30-120 min outages (possibly overlapping)


def test_distances_make_a_connected_directed_graph(small):
    d = small.distances
    assert d["from"].map(type).eq(str).all() and d["to"].map(type).eq(str).all()
    selfs = d[d["from"] == d["to"]]
    assert sorted(selfs["from"]) == sorted(small.sensor_ids) and (selfs["cost"] == 0).all()
    pairs = d[d["from"] != d["to"]]
    assert (pairs["cost"] > 0).all() and pairs["cost"].max() <= 8000
    assert not pairs.duplicated(["from", "to"]).any()
    # Every sensor has a neighbour besides itself.
    touched = set(pairs["from"]) | set(pairs["to"])
    assert touched == set(small.sensor_ids)
    # Directed: a freeway direction does not lead back the other way.
    forward = set(zip(pairs["from"], pairs["to"], strict=True))
    assert sum((b, a) in forward for a, b in forward) < 0.1 * len(forward)


def test_slowdowns_reach_the_upstream_neighbour_later():
    data = make_synthetic(num_sensors=60, num_days=7, seed=3, missing_rate=0.0)
    values = data.speeds.values.astype(np.float64)
    col = {s: i for i, s in enumerate(data.sensor_ids)}
    pairs = data.distances[data.distances["from"] != data.distances["to"]]
    # Each sensor with its nearest downstream neighbour: pair (from = upstream, to = downstream).
    nearest = pairs.sort_values("cost").groupby("from").head(1)
    change = np.diff(values, axis=0)
    change = (change - change.mean(axis=0)) / change.std(axis=0)
    lags = np.arange(-6, 7)
    curve = np.zeros(len(lags))
    for up, down in zip(nearest["from"], nearest["to"], strict=True):
        a, b = change[:, col[down]], change[:, col[up]]
        for k, lag in enumerate(lags):
            # correlation of the downstream change now with the upstream change `lag` steps later
            curve[k] += (
                np.mean(a[: len(a) - lag] * b[lag:]) if lag >= 0 else np.mean(a[-lag:] * b[:lag])
            )
    best = int(lags[np.argmax(curve)])
    assert best > 0, f"lagged correlation peaks at {best}"
    assert curve[lags == best][0] > 1.2 * curve[lags == -best][0]


def test_write_synthetic_files_read_back(tmp_path):
    data = make_synthetic(num_sensors=12, num_days=1, seed=2)
    paths = write_synthetic(data, tmp_path / "out")
    assert [p.name for p in paths] == [
        "speeds.h5",
        "distances.csv",
        "sensor_ids.txt",
        "locations.csv",
    ]
    back = read_speeds(paths[0])
    np.testing.assert_array_equal(back.values, data.speeds.values)
    np.testing.assert_array_equal(back.mask, data.speeds.mask)
    assert paths[2].read_text() == ",".join(data.sensor_ids)
    distances = pd.read_csv(paths[1], dtype={"from": str, "to": str})
    assert distances["from"].tolist() == data.distances["from"].tolist()
    np.testing.assert_allclose(distances["cost"], data.distances["cost"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_bad_arguments():
    with pytest.raises(DataInputError, match="sensors must be an integer >= 2"):
        make_synthetic(num_sensors=1)
    with pytest.raises(DataInputError, match="missing rate"):
        make_synthetic(num_sensors=10, missing_rate=0.9)
    with pytest.raises(DataInputError, match="days"):
        make_synthetic(num_sensors=10, num_days=0)


def test_tiny_networks_still_have_neighbours():
    for n in (2, 3, 5, 10):
        data = make_synthetic(num_sensors=n, num_days=1, seed=0)
        pairs = data.distances[data.distances["from"] != data.distances["to"]]
        assert set(pairs["from"]) | set(pairs["to"]) == set(data.sensor_ids)


def test_thousand_sensors_two_days_is_fast():
    t0 = time.perf_counter()
    data = make_synthetic(num_sensors=1000, num_days=2, seed=0)
    elapsed = time.perf_counter() - t0
    assert data.speeds.values.shape == (576, 1000)
    assert elapsed < 5.0, f"took {elapsed:.1f}s"
