"""How training reports progress: per-epoch records, callback hooks, the result, a silent log.

Progress reaches a caller through typed events (:class:`TrainerCallback`), never through log
text: a job decides on those, the log is for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


def no_log(message: str) -> None:
    """A log that drops every line: for the ranks other than 0 (one voice per job) and for
    callers that want no output."""


class EpochRecord(TypedDict):
    """One finished epoch: an entry of :attr:`TrainResult.history` and of the saved state."""

    epoch: int  # 1-based
    train_mae: float
    val_mae: float
    lr: float
    seconds: float
    global_step: int  # optimizer steps taken so far, this epoch's included


class TrainerCallback:
    """Progress hooks of a :class:`trafficcast.models.trainer.Trainer`; override the ones you
    need (the defaults do nothing).

    ``model`` is the trainer's ``name``. Distributed, the hooks run on rank 0 only.
    """

    def on_resumed(self, model: str, epoch: int, step: int) -> None:
        """A saved state was loaded: training goes on after ``epoch`` (the epochs already done)
        at global step ``step``."""

    def on_epoch_end(self, model: str, record: EpochRecord) -> None:
        """Epoch ``record["epoch"]`` is trained and validated; its state is not saved yet, so a
        process killed here loses this epoch."""

    def on_recovered(self, model: str, epoch: int, reason: str, recoveries: int) -> None:
        """Epoch ``epoch`` (1-based) hit ``reason`` (a non-finite loss or gradient); the state of
        its start is restored and it runs again at half the rate. ``recoveries`` so far."""


@dataclass
class TrainResult:
    """What :meth:`trafficcast.models.trainer.Trainer.fit` returns; ``best_epoch`` is 1-based."""

    best_epoch: int
    best_val_mae: float
    epochs_run: int
    stopped_early: bool
    recoveries: int
    wall_time_s: float
    history: list[EpochRecord]
