"""Sliding windows over a (T, N, ...) series, counted and split exactly as DCRNN does.

DCRNN's ``generate_training_data.py`` takes input offsets -11..0 and target offsets 1..12
around every usable time step, which gives ``T - seq_len - horizon + 1`` windows (2,016 steps
-> 1,993), and splits them chronologically: ``n_test = round(0.2 n)``, ``n_train = round(0.7 n)``,
``n_val`` the rest (1,993 -> 1,395 / 199 / 399). Unlike DCRNN, windows are never materialised:
a window is its start index ``s`` (inputs rows ``s .. s+seq_len-1``, targets rows
``s+seq_len .. s+seq_len+horizon-1``) and batches are gathered on the fly with :func:`gather`;
and the last batch is never padded with repeated samples (DCRNN's loaders did that to val/test,
which biased the reported metrics).

A window's steps must be contiguous in time. The readers put every file on a regular grid, so a
weekdays-only release has its weekends as rows of missing readings; those rows (``skip``, from
:func:`~trafficcast.data.calendar.off_calendar`) are in no window: a window that would span one
is not made, and the splits are taken over the windows that remain (:func:`window_starts`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from trafficcast.data.errors import DataInputError

__all__ = [
    "WindowBatches",
    "gather",
    "num_windows",
    "split_counts",
    "split_windows",
    "window_starts",
]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def num_windows(
    num_steps: int, seq_len: int = 12, horizon: int = 12, *, source: str = "the data"
) -> int:
    """How many (input, target) windows fit in ``num_steps`` rows.

    ``source`` names the data in the error message.
    """
    _check_positive(seq_len=seq_len, horizon=horizon)
    count = int(num_steps) - seq_len - horizon + 1
    if count < 1:
        raise DataInputError(
            f"forecasting needs at least {seq_len + horizon} time steps for one window of "
            f"{seq_len} inputs and {horizon} outputs; {source} has {num_steps}"
        )
    return count


def split_counts(
    n_windows: int,
    train_frac: float = 0.7,
    test_frac: float = 0.2,
    *,
    seq_len: int = 12,
    horizon: int = 12,
    source: str = "the data",
) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` as DCRNN rounds them; validation gets the remainder.

    ``seq_len``/``horizon`` only serve the error message, which says how many time steps
    would give every split at least one window.
    """
    _check_fracs(train_frac, test_frac)
    counts = _counts(int(n_windows), train_frac, test_frac)
    if min(counts) < 1:
        needed = next(n for n in range(1, 1_000_000) if min(_counts(n, train_frac, test_frac)) >= 1)
        steps = needed + seq_len + horizon - 1
        raise DataInputError(
            f"{source} gives {n_windows} windows, split into train/val/test = "
            f"{counts[0]}/{counts[1]}/{counts[2]}; every split needs at least one, which takes "
            f"at least {needed} windows ({steps} time steps with {seq_len} inputs and "
            f"{horizon} outputs)"
        )
    return counts


def window_starts(
    num_steps: int,
    seq_len: int = 12,
    horizon: int = 12,
    skip: npt.NDArray[np.bool_] | None = None,
    *,
    source: str = "the data",
) -> npt.NDArray[np.int64]:
    """The start of every window whose ``seq_len + horizon`` rows are all kept: none of them a
    ``skip`` row (a day off the data's calendar). Without ``skip``, ``0 .. num_windows - 1``.

    Raises:
        DataInputError: no window fits.

    Shapes:
        skip (T,) bool -> (W,) int64, increasing.
    """
    n = num_windows(num_steps, seq_len, horizon, source=source)
    starts = np.arange(n, dtype=np.int64)
    if skip is None:
        return starts
    skip = np.asarray(skip, dtype=bool)
    if skip.shape != (num_steps,):
        raise ValueError(f"skip has shape {skip.shape}, expected ({num_steps},)")
    # Skipped rows before each row: a window is clear when none falls inside it.
    before = np.concatenate(([0], np.cumsum(skip, dtype=np.int64)))  # (T + 1,)
    clear = before[starts + seq_len + horizon] == before[starts]
    if not clear.any():
        raise DataInputError(
            f"{source}: no window of {seq_len} inputs and {horizon} outputs fits between the "
            "days its calendar leaves out"
        )
    kept: npt.NDArray[np.int64] = starts[clear]
    return kept


def split_windows(
    num_steps: int,
    seq_len: int = 12,
    horizon: int = 12,
    train_frac: float = 0.7,
    test_frac: float = 0.2,
    *,
    source: str = "the data",
    skip: npt.NDArray[np.bool_] | None = None,
) -> dict[str, np.ndarray]:
    """Window start indices of the chronological train / val / test splits.

    The splits are contiguous and in time order; the last test window's target ends at the
    last row (the last row not skipped). ``skip``: rows no window may span
    (:func:`window_starts`); the splits divide the windows that remain.

    Shapes:
        skip (T,) bool; returns {"train": (n_train,), "val": (n_val,), "test": (n_test,)} int64.
    """
    starts = window_starts(num_steps, seq_len, horizon, skip, source=source)
    n = len(starts)
    n_train, n_val, _ = split_counts(
        n, train_frac, test_frac, seq_len=seq_len, horizon=horizon, source=source
    )
    return {
        "train": starts[:n_train],
        "val": starts[n_train : n_train + n_val],
        "test": starts[n_train + n_val :],
    }


def gather(
    array: ArrayOrTensor, starts: npt.ArrayLike | torch.Tensor, offset: int, length: int
) -> ArrayOrTensor:
    """``array[starts[:, None] + offset + arange(length)]`` in one fancy-index gather.

    Inputs of the windows are ``gather(x, starts, 0, seq_len)``, targets
    ``gather(y, starts, seq_len, horizon)``. Works on numpy arrays and torch tensors (the result
    has the type, device and dtype of ``array``); only the small batch is allocated. Rows out of
    range raise ``IndexError`` instead of wrapping around as negative indices would.

    Shapes:
        array (T, N, ...), starts (B,) -> (B, length, N, ...).
    """
    num_steps = array.shape[0]
    if isinstance(array, torch.Tensor):
        starts_t = torch.as_tensor(starts, dtype=torch.long, device=array.device)
        rows_t = starts_t[:, None] + offset + torch.arange(length, device=array.device)  # (B, L)
        _check_rows(rows_t, num_steps)
        return array[rows_t]  # (B, L, N, ...)
    starts_np = np.asarray(starts, dtype=np.int64)
    rows = starts_np[:, None] + offset + np.arange(length, dtype=np.int64)  # (B, L)
    _check_rows(rows, num_steps)
    gathered: np.ndarray = array[rows]  # (B, L, N, ...)
    return gathered


def _check_rows(rows: np.ndarray | torch.Tensor, num_steps: int) -> None:
    """Refuse rows out of ``0 .. num_steps - 1`` (negative ones would wrap around)."""
    empty = rows.shape[0] == 0 or rows.shape[1] == 0
    low, high = (0, 0) if empty else (int(rows.min()), int(rows.max()))
    if low < 0 or high >= num_steps:
        raise IndexError(
            f"windows need rows {low}..{high} but the array has {num_steps} time steps"
        )


class WindowBatches:
    """Batches of window start indices, optionally shuffled with a torch generator.

    ``iter()`` yields int64 numpy arrays of at most ``batch_size`` starts; with ``shuffle``
    each pass draws a fresh permutation from ``generator`` (the same seed gives the same
    order). The last batch is smaller unless ``drop_last``; it is never padded.

    Shapes:
        starts (W,) -> each batch (B,), B <= batch_size.
    """

    def __init__(
        self,
        starts: np.ndarray,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.generator = generator
        self.drop_last = bool(drop_last)

    def __len__(self) -> int:
        n = len(self.starts)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self.starts
        if self.shuffle:
            perm = torch.randperm(len(self.starts), generator=self.generator).numpy()
            order = self.starts[perm]
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].copy()


def _counts(n: int, train_frac: float, test_frac: float) -> tuple[int, int, int]:
    # Python's round (half to even), exactly as DCRNN's generate_training_data.py.
    n_test = round(n * test_frac)
    n_train = round(n * train_frac)
    return n_train, n - n_test - n_train, n_test


def _check_fracs(train_frac: float, test_frac: float) -> None:
    if not (0 < train_frac < 1 and 0 < test_frac < 1 and train_frac + test_frac < 1):
        raise DataInputError(
            f"split fractions need 0 < train ({train_frac}), 0 < test ({test_frac}) and "
            "train + test < 1"
        )


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if int(value) != value or value < 1:
            raise DataInputError(f"{name} must be a positive integer, not {value!r}")
