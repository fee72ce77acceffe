"""A tiny DCRNN training that test_models_distributed runs in one process and under torchrun.

Usage under torchrun: ``ddp_nan_worker.py OUT_DIR NAN_RANK NAN_CALL``: rank ``NAN_RANK``'s model
returns NaN on its ``NAN_CALL``-th training forward (1-based), as a diverging shard would; every
rank writes ``OUT_DIR/rank{r}.json`` with what it saw and its final weights.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from trafficcast.data import StandardScaler, gather, make_synthetic, split_windows
from trafficcast.graph import build_adjacency, compute_supports
from trafficcast.graph.tensors import to_torch_sparse_csr
from trafficcast.models import DCRNN
from trafficcast.models.config import TrainConfig
from trafficcast.models.distributed import DistContext, distributed_session, shard_bounds
from trafficcast.models.trainer import Batch, Trainer

SEQ_LEN, HORIZON, BATCH = 4, 3, 13


class Source:
    """Scaled speed windows of synthetic data, shardable like trafficcast.app.pipeline.WindowSource.

    Shapes: ``features (T, N, 1)``; batches as :class:`trafficcast.models.trainer.Batch`.
    """

    def __init__(self) -> None:
        data = make_synthetic(num_sensors=4, num_days=1, seed=5, freq_minutes=15)
        speeds = data.speeds
        self.splits = split_windows(speeds.num_steps, SEQ_LEN, HORIZON)
        self.scaler = StandardScaler().fit(speeds.values, speeds.mask)
        self.targets = torch.from_numpy(speeds.values)
        self.mask = torch.from_numpy(speeds.mask)
        scaled = torch.where(self.mask, self.scaler.transform(self.targets), torch.zeros(()))
        self.features = scaled.float()[..., None]
        adj = build_adjacency(data.distances, data.sensor_ids)
        self.supports = [to_torch_sparse_csr(p) for p in compute_supports(adj, "dual_random_walk")]
        self.num_sensors = speeds.num_sensors

    def num_batches(self, split: str) -> int:
        return math.ceil(len(self.splits[split]) / BATCH)

    def batches(
        self,
        split: str,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        starts = self.splits[split]
        if split == "train" and generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator).numpy()]
        for i in range(0, len(starts), BATCH):
            chunk = starts[i : i + BATCH]
            if shard is not None:
                lo, hi = shard_bounds(len(chunk), *shard)
                if hi == lo:
                    batch = self.batch(chunk[:1])
                    batch.padding = True
                    yield batch
                    continue
                chunk = chunk[lo:hi]
            yield self.batch(chunk)

    def batch(self, starts: np.ndarray) -> Batch:
        return Batch(
            x=gather(self.features, starts, 0, SEQ_LEN),
            y=gather(self.features, starts, SEQ_LEN, HORIZON),
            y_raw=gather(self.targets, starts, SEQ_LEN, HORIZON),
            y_mask=gather(self.mask, starts, SEQ_LEN, HORIZON),
        )


class NaNDCRNN(DCRNN):
    """Returns NaN on the chosen training forward calls (1-based)."""

    def __init__(self, *args, nan_calls: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_calls = nan_calls
        self.training_calls = 0

    def forward(self, x, targets=None, teacher_forcing_prob=0.0, generator=None):
        out = super().forward(x, targets, teacher_forcing_prob, generator)
        if self.training:
            self.training_calls += 1
            if self.training_calls in self.nan_calls:
                return out * float("nan")
        return out


def train(dist: DistContext | None, nan_calls: set[int]) -> dict:
    """Two epochs; returns the log lines, history, recoveries and the flat final weights."""
    source = Source()
    torch.manual_seed(0)
    model = NaNDCRNN(
        num_nodes=source.num_sensors,
        input_dim=1,
        supports=source.supports,
        hidden_dim=8,
        num_layers=1,
        max_diffusion_step=2,
        seq_len=SEQ_LEN,
        horizon=HORIZON,
        nan_calls=nan_calls,
    )
    lines: list[str] = []
    settings = TrainConfig(epochs=2, base_lr=0.01, steps=[100], max_recoveries=3)
    trainer = Trainer(
        model,
        source,
        settings,
        source.scaler.inverse_transform,
        log=lines.append,
        progress=False,
        dist=dist,
        teacher_forcing_decay_steps=2000,
    )
    result = trainer.fit()
    trainer.close()
    return {
        "lines": lines,
        "history": [{k: h[k] for k in ("train_mae", "val_mae", "lr")} for h in result.history],
        "recoveries": result.recoveries,
        "global_step": trainer.global_step,
        "weights": torch.cat([p.detach().flatten() for p in model.parameters()]).tolist(),
    }


def main() -> None:
    out, nan_rank, nan_call = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    with distributed_session(torch.device("cpu")) as dist:
        assert dist is not None, "run me under torchrun"
        record = train(dist, {nan_call} if dist.rank == nan_rank else set())
        (out / f"rank{dist.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
