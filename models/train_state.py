"""What the trainer keeps: its resumable state, written atomically, and the snapshot of an
epoch's start that a non-finite loss or gradient rolls back to.

Exploding gradients are DCRNN's best-known failure. A non-finite value never reaches the weights:
the step raises :class:`NonFiniteError` before the optimizer steps, and the trainer restores the
:class:`EpochStart` taken before the epoch (weights, optimizer moments, the generator's state, the
global step), halves the learning rate and runs the epoch again.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from trafficcast.graph.io import atomic_write
from trafficcast.models.progress import EpochRecord


class NonFiniteError(Exception):
    """A non-finite loss or gradient in a training step; the message says which and where."""


class TrainerState(TypedDict):
    """Everything :meth:`trafficcast.models.trainer.Trainer.fit` needs to go on after a restart
    exactly as if it had not stopped (the file ``torch.save`` writes after every epoch)."""

    model: dict[str, Any]  # the model's state_dict
    optimizer: dict[str, Any]  # the optimizer's state_dict
    generator: torch.Tensor  # the shuffles' and coins' generator
    epoch: int  # epochs done
    global_step: int
    best_val_mae: float
    best_epoch: int  # 0-based; -1 before the first validation
    best_state: dict[str, torch.Tensor] | None  # the best epoch's weights
    bad_epochs: int  # epochs since the last improvement
    recoveries: int
    recovery_factor: float  # 0.5 per recovery, on the learning rate
    history: list[EpochRecord]
    elapsed_s: float


def detached_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers, cloned: later steps do not change them."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EpochStart:
    """The state of an epoch's start, to go back to when the epoch meets a non-finite value."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        global_step: int,
    ) -> None:
        self.model = detached_copy(model)
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.generator = generator.get_state()
        self.global_step = global_step

    def restore(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> int:
        """Put the weights, the optimizer and the generator back; returns the global step."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        generator.set_state(self.generator)
        return self.global_step


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`trafficcast.graph.io.atomic_write`, creating missing
    directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
