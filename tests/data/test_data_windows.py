"""Window counts and splits as DCRNN makes them, gathered batches, batch iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficcast.data import (
    DataInputError,
    WindowBatches,
    gather,
    num_windows,
    read_speeds,
    split_counts,
    split_windows,
)
from trafficcast.data.bundled import sample_speeds_path


def test_bundled_week_gives_dcrnn_counts():
    week = read_speeds(sample_speeds_path())
    n = num_windows(week.num_steps)
    assert (week.num_steps, n) == (2016, 1993)
    assert split_counts(n) == (1395, 199, 399)
    splits = split_windows(week.num_steps)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1395, 199, 399]
    # Chronological, contiguous, no overlap of starts.
    joined = np.concatenate([splits["train"], splits["val"], splits["test"]])
    np.testing.assert_array_equal(joined, np.arange(1993))
    assert splits["train"].dtype == np.int64
    # The last test window's target ends exactly at the last row.
    last = int(splits["test"][-1])
    assert last + 12 + 12 - 1 == week.num_steps - 1
    y = gather(week.values, splits["test"][-1:], 12, 12)
    np.testing.assert_array_equal(y[0, -1], week.values[-1])


def test_window_offsets_match_dcrnn_x_and_y():
    # DCRNN: x offsets -11..0, y offsets 1..12 around t; window start s = t - 11.
    series = np.arange(40, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)
    t = 20
    x = gather(series, np.array([t - 11]), 0, 12)
    y = gather(series, np.array([t - 11]), 12, 12)
    np.testing.assert_array_equal(x[0, :, 0], np.arange(t - 11, t + 1))
    np.testing.assert_array_equal(y[0, :, 0], np.arange(t + 1, t + 13))
    np.testing.assert_array_equal(y[0, :, 1], 10 * np.arange(t + 1, t + 13))


def test_split_counts_rounding_and_other_fractions():
    assert split_counts(100) == (70, 10, 20)
    assert split_counts(10) == (7, 1, 2)
    assert split_counts(1000, train_frac=0.6, test_frac=0.2) == (600, 200, 200)


def test_the_pems0x_split_cuts_windows_then_splits_them():
    """6:2:2 of PEMS04's 16,992 steps (README, "Compare with the published tables"): the
    windows are cut first, then split, so the test split has 3,394 windows; AGCRN splits the
    steps first (its last int(0.2 * 16992) = 3,398 steps) and cuts 3,375 windows from them."""
    n = num_windows(16_992)
    assert n == 16_969
    assert split_counts(n, train_frac=0.6, test_frac=0.2) == (10_181, 3_394, 3_394)
    agcrn_test_steps = int(16_992 * 0.2)
    assert num_windows(agcrn_test_steps) == 3_375
    # METR-LA's 34,272 steps at DCRNN's 7:1:2, as its generate_training_data.py counts them.
    assert split_counts(num_windows(34_272)) == (23_974, 3_425, 6_850)


def test_too_few_steps_messages_name_the_source():
    with pytest.raises(DataInputError) as info:
        num_windows(10, source="speeds.csv")
    assert str(info.value) == (
        "forecasting needs at least 24 time steps for one window of 12 inputs and 12 outputs; "
        "speeds.csv has 10"
    )
    with pytest.raises(DataInputError, match=r"at least 6 windows \(29 time steps"):
        split_counts(3)
    with pytest.raises(DataInputError, match="at least 6 windows"):
        split_windows(26)  # 3 windows: train 2, val 0, test 1
    assert {k: len(v) for k, v in split_windows(29).items()} == {"train": 4, "val": 1, "test": 1}
    with pytest.raises(DataInputError, match="split fractions"):
        split_counts(100, train_frac=0.9, test_frac=0.2)


def test_gather_equals_explicit_slices_numpy_and_torch():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(50, 4, 2)).astype(np.float32)
    starts = np.array([0, 7, 26, 7])
    batch = gather(array, starts, 12, 12)
    assert batch.shape == (4, 12, 4, 2)
    for b, s in enumerate(starts):
        np.testing.assert_array_equal(batch[b], array[s + 12 : s + 24])
    tensor = torch.from_numpy(array).double()
    tbatch = gather(tensor, torch.tensor(starts), 0, 12)
    assert isinstance(tbatch, torch.Tensor) and tbatch.dtype == torch.float64
    for b, s in enumerate(starts):
        assert torch.equal(tbatch[b], tensor[s : s + 12])
    tbatch[0, 0, 0, 0] = 99.0  # a new batch, not a view of the series
    assert tensor[0, 0, 0] != 99.0


def test_gather_refuses_rows_out_of_range():
    array = np.zeros((30, 2))
    with pytest.raises(IndexError, match=r"rows 19\.\.30 but the array has 30"):
        gather(array, np.array([7]), 12, 12)
    with pytest.raises(IndexError):
        gather(array, np.array([0]), -1, 12)


def test_window_batches_sequential_and_shuffled():
    starts = np.arange(10, 33, dtype=np.int64)  # 23 windows
    plain = WindowBatches(starts, batch_size=5, shuffle=False)
    batches = list(plain)
    assert len(plain) == 5 and [len(b) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(batches), starts)
    assert batches[0].dtype == np.int64
    assert len(WindowBatches(starts, 5, shuffle=False, drop_last=True)) == 4
    assert [len(b) for b in WindowBatches(starts, 5, shuffle=False, drop_last=True)] == [5] * 4

    def order(seed: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(seed)
        return np.concatenate(list(WindowBatches(starts, 4, shuffle=True, generator=gen)))

    first, again, other = order(1), order(1), order(2)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(np.sort(first), starts)
    assert not np.array_equal(first, starts) and not np.array_equal(first, other)
    # A fresh permutation on every pass over the same generator.
    gen = torch.Generator().manual_seed(3)
    loader = WindowBatches(starts, 23, shuffle=True, generator=gen)
    assert not np.array_equal(next(iter(loader)), next(iter(loader)))
    with pytest.raises(ValueError):
        WindowBatches(starts, 0, shuffle=False)
