"""The training loop shared by DCRNN and FC-LSTM.

* Masked MAE on unscaled values (0 / missing targets excluded), Adam, the learning rate decayed by
  ``lr_decay_ratio`` at each epoch in ``steps`` (``MultiStepLR``'s rule, computed from the epoch
  number so that a resumed run gets exactly the same rate), floored at ``min_learning_rate``.
* Gradient-norm clipping at ``max_grad_norm``; scheduled sampling with the paper's inverse-sigmoid
  decay ``k / (k + exp(step / k))`` over global steps, in training only.
* Early stopping on validation MAE after ``patience`` epochs without improvement; the best
  weights are kept and restored at the end.
* Exploding gradients, DCRNN's best-known failure: a non-finite loss or gradient never reaches the
  weights. The trainer restores the state of the start of the epoch, halves the learning rate,
  says so, and re-runs the epoch; after ``max_recoveries`` such events it stops with
  :class:`TrainingError`.
* Repeatable: one ``torch.Generator`` seeded from ``seed`` draws the shuffles and the
  teacher-forcing coins; its state is saved with the rest, so ``resume`` continues an interrupted
  run to the same result.
* Distributed (given a :class:`trafficcast.models.distributed.DistContext`): the model is wrapped in
  ``DistributedDataParallel`` and every rank walks the same shuffled sequence of global batches
  (same generator, same coins), taking its own contiguous share of each. The loss is weighted so
  that DDP's averaged gradient equals the single-process gradient of the whole global batch;
  validation sums and every stop/recover decision are reduced across ranks, so all ranks agree;
  only rank 0 logs, reports progress and writes the state. The state is the same as a single
  process's, so a run can be resumed with another number of processes.
* Progress reaches the caller through :class:`TrainerCallback` hooks (typed events, not log
  lines): a job decides on those, the log is for people.

This module is the loop. What it reads is defined in :mod:`trafficcast.models.batches`, what it
reports in :mod:`trafficcast.models.progress`, and what it keeps (the resumable state, the
snapshot a recovery rolls back to, atomic saves) in :mod:`trafficcast.models.train_state`; their
names are importable from here as well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trafficcast.models.batches import Batch, BatchSource
from trafficcast.models.config import TrainConfig
from trafficcast.models.distributed import DistContext
from trafficcast.models.errors import TrainingError
from trafficcast.models.metrics import MaskedMetrics, masked_mae_loss, observed
from trafficcast.models.progress import EpochRecord, TrainerCallback, TrainResult, no_log
from trafficcast.models.train_state import (
    EpochStart,
    NonFiniteError,
    TrainerState,
    atomic_torch_save,
    detached_copy,
)

# Defined in the modules above and imported from here by callers since before the split.
__all__ = [
    "Batch",
    "BatchSource",
    "EpochRecord",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "atomic_torch_save",
    "learning_rate",
    "no_log",
    "teacher_forcing_probability",
]


def teacher_forcing_probability(global_step: int, decay_steps: int) -> float:
    """The paper's inverse-sigmoid decay: ``k / (k + exp(step / k))``."""
    k = float(decay_steps)
    exponent = global_step / k
    if exponent > 700:  # exp overflows; the probability is 0 to double precision
        return 0.0
    return k / (k + math.exp(exponent))


def learning_rate(settings: TrainConfig, epoch: int, recovery_factor: float = 1.0) -> float:
    """MultiStepLR's rate at 0-based ``epoch``, times the recovery factor, floored."""
    decays = sum(1 for milestone in settings.steps if milestone <= epoch)
    rate = settings.base_lr * settings.lr_decay_ratio**decays * recovery_factor
    return max(rate, settings.min_learning_rate)


class Trainer:
    """Trains ``model`` on a :class:`BatchSource`.

    Args:
        model: maps ``(x, targets, teacher_forcing_prob, generator)`` to scaled predictions.
        source: the batches.
        settings: the ``train:`` section of the run's config (:class:`trafficcast.models.config.TrainConfig`).
        inverse_transform: scaled predictions -> data units (the scaler's inverse).
        state_path: where the resumable state is written after every epoch (atomically); None
            keeps nothing on disk.
        log: receives one line per epoch and every recovery (rank 0 only when distributed).
        progress: show a tqdm bar per epoch (rank 0 only).
        dist: this process's place in a torchrun job; None for a single process.
        callbacks: progress hooks, called in order (rank 0 only).
        teacher_forcing_decay_steps: ``k`` of the paper's scheduled sampling (the decoder is fed
            the truth with probability ``k / (k + exp(step / k))``); None feeds it its own
            predictions throughout.
    """

    def __init__(
        self,
        model: nn.Module,
        source: BatchSource,
        settings: TrainConfig,
        inverse_transform: Callable[[torch.Tensor], torch.Tensor],
        state_path: Path | None = None,
        log: Callable[[str], None] = print,
        progress: bool = True,
        name: str = "model",
        dist: DistContext | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        teacher_forcing_decay_steps: int | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.settings = settings
        self.teacher_forcing_decay_steps = teacher_forcing_decay_steps
        self.inverse_transform = inverse_transform
        self.state_path = Path(state_path) if state_path is not None else None
        self.dist = dist
        main = dist is None or dist.is_main
        self.log = log if main else no_log
        self.callbacks = tuple(callbacks) if main else ()
        self.progress = progress and main
        self.name = name
        # What the training step calls: the model itself, or its DDP wrapper (which all-reduces
        # the gradients during backward). Evaluation and the state always use the bare model.
        self.net: nn.Module = model
        if dist is not None:
            device = next(model.parameters()).device
            self.net = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                # The only buffers are the graph's supports: constant and identical on every
                # rank (synced once at construction), so re-broadcasting them before each
                # forward would be wasted traffic.
                forward_sync_buffers=False,
            )
        self._optimizer: torch.optim.Optimizer | None = torch.optim.Adam(
            model.parameters(),
            lr=settings.base_lr,
            eps=settings.epsilon,
            weight_decay=settings.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.epoch = 0
        self.global_step = 0
        self.best_val_mae = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.recoveries = 0
        self.recovery_factor = 1.0
        self.history: list[EpochRecord] = []
        self.elapsed_s = 0.0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The Adam optimizer over the model's parameters, until :meth:`close`."""
        if self._optimizer is None:
            raise TrainingError(f"{self.name}: the trainer is closed (its optimizer is dropped)")
        return self._optimizer

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> TrainerState:
        """The resumable state: the model, the optimizer, the generator and the counters."""
        return TrainerState(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            generator=self.generator.get_state(),
            epoch=self.epoch,
            global_step=self.global_step,
            best_val_mae=self.best_val_mae,
            best_epoch=self.best_epoch,
            best_state=self.best_state,
            bad_epochs=self.bad_epochs,
            recoveries=self.recoveries,
            recovery_factor=self.recovery_factor,
            history=self.history,
            elapsed_s=self.elapsed_s,
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a :class:`TrainerState` (a file's: one written before ``elapsed_s`` existed
        counts it from 0)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_val_mae = float(state["best_val_mae"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.bad_epochs = int(state["bad_epochs"])
        self.recoveries = int(state["recoveries"])
        self.recovery_factor = float(state["recovery_factor"])
        self.history = list(state["history"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))

    def save_state(self) -> None:
        """Write :meth:`state_dict` to ``state_path`` atomically (rank 0; none without a path)."""
        if self.state_path is None or (self.dist is not None and not self.dist.is_main):
            return
        atomic_torch_save(self.state_dict(), self.state_path)

    def load_state(self) -> bool:
        """Load the resumable state if there is one; True if loaded.

        Distributed, every rank reads the file rank 0 wrote, so RUN_DIR must be on a filesystem
        all ranks see; if only some ranks find it, the ranks would diverge, and this refuses.
        """
        found = self.state_path is not None and self.state_path.exists()
        if self.dist is not None and not self.dist.all_agree(found):
            raise TrainingError(
                f"{self.name}: only some ranks see {self.state_path}; resuming a distributed run "
                f"needs the run directory on a filesystem shared by all ranks"
            )
        if not found or self.state_path is None:
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        return True

    # ---- training --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train until ``epochs`` or early stopping, then restore the best epoch's weights.

        With ``resume``, first load the saved state if there is one and go on from it.
        """
        if resume and self.load_state():
            self.log(f"{self.name}: resumed after epoch {self.epoch} (step {self.global_step})")
            for callback in self.callbacks:
                callback.on_resumed(self.name, self.epoch, self.global_step)
        s = self.settings
        stopped_early = False
        while self.epoch < s.epochs:
            if self.bad_epochs >= s.patience:
                stopped_early = True
                break
            start = EpochStart(self.model, self.optimizer, self.generator, self.global_step)
            started = time.perf_counter()
            try:
                train_mae = self._train_epoch()
            except NonFiniteError as exc:
                self._recover(start, str(exc))
                continue
            val_mae = self.evaluate_mae("val")
            seconds = time.perf_counter() - started
            self.elapsed_s += seconds
            improved = val_mae < self.best_val_mae
            if improved:
                self.best_val_mae = val_mae
                self.best_epoch = self.epoch
                self.best_state = detached_copy(self.model)
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            lr = self.optimizer.param_groups[0]["lr"]
            record = EpochRecord(
                epoch=self.epoch + 1,
                train_mae=train_mae,
                val_mae=val_mae,
                lr=lr,
                seconds=round(seconds, 3),
                global_step=self.global_step,
            )
            self.history.append(record)
            self.log(
                f"{self.name} epoch {self.epoch + 1}/{s.epochs}: train MAE {train_mae:.4f}, "
                f"val MAE {val_mae:.4f}{' (best)' if improved else ''}, lr {lr:.2g}, {seconds:.1f} s"
            )
            for callback in self.callbacks:
                callback.on_epoch_end(self.name, record)
            self.epoch += 1
            self.save_state()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return TrainResult(
            best_epoch=self.best_epoch + 1,
            best_val_mae=self.best_val_mae,
            epochs_run=self.epoch,
            stopped_early=stopped_early,
            recoveries=self.recoveries,
            wall_time_s=self.elapsed_s,
            history=self.history,
        )

    def close(self) -> None:
        """Drop the DDP wrapper and the optimizer (the model keeps its trained weights).

        Distributed, this must happen before the process group is destroyed: a DDP reducer
        that outlives its group can abort the process at exit.
        """
        self.net = self.model
        self._optimizer = None

    def _recover(self, start: EpochStart, why: str) -> None:
        self.recoveries += 1
        if self.recoveries > self.settings.max_recoveries:
            raise TrainingError(
                f"{self.name}: training diverged ({why}) {self.recoveries} times even after lowering "
                f"the learning rate; try a lower train.base_lr or train.max_grad_norm"
            )
        self.global_step = start.restore(self.model, self.optimizer, self.generator)
        self.recovery_factor *= 0.5
        self.log(
            f"{self.name} epoch {self.epoch + 1}: {why}; restored the state of the epoch's start, "
            f"halved the learning rate (recovery {self.recoveries}/{self.settings.max_recoveries})"
        )
        for callback in self.callbacks:
            callback.on_recovered(self.name, self.epoch + 1, why, self.recoveries)

    def _train_epoch(self) -> float:
        s = self.settings
        self.net.train()
        lr = learning_rate(s, self.epoch, self.recovery_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches: Iterable[Batch] = self._batches("train", self.generator)
        bar = None
        if self.progress:
            bar = tqdm(
                batches,
                total=self.source.num_batches("train"),
                desc=f"{self.name} epoch {self.epoch + 1}",
                leave=False,
                dynamic_ncols=True,
            )
            batches = bar
        total, count = 0.0, 0
        for batch in batches:
            prob = (
                teacher_forcing_probability(self.global_step, self.teacher_forcing_decay_steps)
                if self.teacher_forcing_decay_steps is not None
                else 0.0
            )
            self.optimizer.zero_grad(set_to_none=True)
            pred = self.net(batch.x, batch.y, prob, self.generator)
            if self.dist is None:
                loss = masked_mae_loss(
                    self.inverse_transform(pred[..., 0]), batch.y_raw, batch.y_mask
                )
                value = float(loss.detach())
            else:
                loss, value = self._sharded_loss(pred, batch)
            if not math.isfinite(value):
                raise NonFiniteError(f"non-finite loss at step {self.global_step}")
            torch.autograd.backward(loss)  # loss.backward(), whose stub is unannotated
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
            bad_norm = not torch.isfinite(norm)
            if self.dist is not None:
                # The averaged gradients are the same everywhere; agree anyway, since one rank
                # stepping while another recovers would split the model in two.
                bad_norm = self.dist.any(bad_norm)
            if bad_norm:
                raise NonFiniteError(f"non-finite gradient at step {self.global_step}")
            self.optimizer.step()
            self.global_step += 1
            total += value
            count += 1
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3f}")
        if bar is not None:
            bar.close()
        return total / max(count, 1)

    def _batches(self, split: str, generator: torch.Generator | None = None) -> Iterator[Batch]:
        if self.dist is None:
            return self.source.batches(split, generator)
        return self.source.batches(split, generator, (self.dist.rank, self.dist.world_size))

    def _sharded_loss(self, pred: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, float]:
        """This rank's share of the global batch's masked MAE, and the global MAE's value.

        The single-process loss is ``sum |err| / count`` over the whole global batch. DDP
        averages the ranks' gradients, i.e. divides their sum by the world size, so rank r
        back-propagates ``sum_r |err| * world_size / count`` with ``count`` summed over ranks:
        the averaged gradient is then exactly the single-process one, however unevenly the
        observed targets fall across the shares.

        Shapes: ``pred (b, H, N, 1)`` scaled, this rank's ``b`` windows.
        """
        if self.dist is None:
            raise TrainingError(f"{self.name}: the sharded loss needs a distributed context")
        pred_raw = self.inverse_transform(pred[..., 0])
        mask = batch.y_mask.to(pred_raw.dtype)
        if batch.padding:
            mask = torch.zeros_like(mask)
        # Multiplied, as masked_mae_loss does, so a NaN anywhere shows as it would there.
        abs_sum = (torch.abs(pred_raw - batch.y_raw) * mask).sum()
        local = torch.stack([abs_sum.detach(), mask.sum()]).to(torch.float64)
        total_abs, total_count = (float(v) for v in self.dist.all_reduce_sum(local))
        if total_count == 0:
            return (pred_raw * 0).sum(), 0.0
        return abs_sum * (self.dist.world_size / total_count), total_abs / total_count

    @torch.inference_mode()
    def evaluate_mae(self, split: str) -> float:
        """Masked MAE over all horizon steps of ``split`` (data units), over all ranks' shares."""
        self.model.eval()
        abs_sum, n = 0.0, 0.0
        for batch in self._batches(split):
            if batch.padding:
                continue
            pred = self.inverse_transform(self.model(batch.x)[..., 0])
            mask = observed(batch.y_raw, batch.y_mask)
            abs_sum += float((pred - batch.y_raw).abs()[mask].sum())
            n += float(mask.sum())
        if self.dist is not None:
            totals = self.dist.all_reduce_sum(torch.tensor([abs_sum, n], dtype=torch.float64))
            abs_sum, n = float(totals[0]), float(totals[1])
        return abs_sum / n if n else math.nan

    @torch.inference_mode()
    def evaluate(self, split: str) -> MaskedMetrics:
        """Masked metrics of ``split``; distributed, every rank scores its share and gets the
        sums of all."""
        self.model.eval()
        metrics = None
        for batch in self._batches(split):
            if metrics is None:
                metrics = MaskedMetrics(batch.y_raw.shape[1])
            if batch.padding:
                continue
            pred = self.inverse_transform(self.model(batch.x)[..., 0])
            metrics.update(pred, batch.y_raw, batch.y_mask)
        if metrics is None:
            raise TrainingError(f"no {split} windows to evaluate")
        if self.dist is not None:
            for name in ("abs_sum", "sq_sum", "pct_sum", "count"):
                setattr(metrics, name, self.dist.all_reduce_sum(getattr(metrics, name)))
        return metrics
