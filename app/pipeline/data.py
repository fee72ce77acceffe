"""The data side of a run: speeds prepared as model inputs, windows gathered from them, the road
graph in the data's sensor order, and the checks that data fits a model."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trafficcast.app.forecaster import missing_rule, model_inputs
from trafficcast.data import (
    SpeedData,
    StandardScaler,
    gather,
    off_calendar,
    read_speeds,
    split_windows,
)
from trafficcast.data.errors import DataInputError
from trafficcast.graph import (
    build_adjacency,
    compute_supports,
    load_adjacency,
    read_dense_matrix,
    read_distances,
)
from trafficcast.graph.tensors import to_torch_sparse_csr
from trafficcast.models.baselines import time_slots
from trafficcast.models.config import RunConfig
from trafficcast.models.distributed import shard_bounds
from trafficcast.models.errors import ConfigError
from trafficcast.models.trainer import Batch


@dataclass
class PreparedData:
    """Speeds turned into model inputs, once, as whole-series arrays (windows are gathered later).

    Shapes: ``features (T, N, F)`` scaled speed (missing = 0, i.e. the mean) then time features;
    ``targets (T, N)`` raw speeds (missing = 0); ``mask (T, N)`` True where observed;
    ``slots (T,)`` time-of-day slot of each step.
    """

    speeds: SpeedData
    features: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    scaler: StandardScaler
    splits: dict[str, np.ndarray]
    slots: np.ndarray
    seq_len: int
    horizon: int

    @property
    def input_dim(self) -> int:
        return int(self.features.shape[-1])

    def train_rows(self) -> int:
        """Rows covered by the training windows (inputs and targets)."""
        return int(self.splits["train"][-1]) + self.seq_len + self.horizon


def prepare_data(
    speeds: SpeedData,
    config: RunConfig,
    scaler: StandardScaler | None = None,
) -> PreparedData:
    """Scale, add time features and split. The scaler is fit on observed training values only."""
    m, d = config.model, config.data
    splits = split_windows(
        speeds.num_steps,
        seq_len=m.seq_len,
        horizon=m.horizon,
        train_frac=d.train_fraction,
        test_frac=d.test_fraction,
        skip=off_calendar(speeds.index, speeds.calendar),
    )
    values = torch.from_numpy(np.ascontiguousarray(speeds.values, dtype=np.float32))
    mask = torch.from_numpy(np.ascontiguousarray(speeds.mask))
    if scaler is None:
        train_rows = int(splits["train"][-1]) + m.seq_len + m.horizon
        scaler = StandardScaler().fit(speeds.values[:train_rows], speeds.mask[:train_rows])
    features = torch.from_numpy(
        model_inputs(
            speeds.values, speeds.mask, speeds.index, scaler, d.add_time_in_day, d.add_day_in_week
        )
    )  # (T, N, F)
    minutes = speeds.index.hour * 60 + speeds.index.minute
    return PreparedData(
        speeds=speeds,
        features=features,
        targets=values,
        mask=mask,
        scaler=scaler,
        splits=splits,
        slots=time_slots(np.asarray(minutes), speeds.freq_minutes),
        seq_len=m.seq_len,
        horizon=m.horizon,
    )


class WindowSource:
    """Batches of windows gathered on the fly from the whole-series arrays (no materialised copies)."""

    def __init__(
        self, prepared: PreparedData, batch_sizes: dict[str, int], device: torch.device
    ) -> None:
        self.prepared = prepared
        self.batch_sizes = batch_sizes
        self.device = device

    def num_batches(self, split: str) -> int:
        n = len(self.prepared.splits[split])
        return math.ceil(n / self.batch_sizes[split])

    def batch_at(self, starts: np.ndarray) -> Batch:
        p = self.prepared
        starts_t = torch.from_numpy(np.asarray(starts, dtype=np.int64))
        x = gather(p.features, starts_t, 0, p.seq_len)  # (B, T, N, F)
        y = gather(p.features[..., :1], starts_t, p.seq_len, p.horizon)  # (B, H, N, 1)
        y_raw = gather(p.targets, starts_t, p.seq_len, p.horizon)  # (B, H, N)
        y_mask = gather(p.mask, starts_t, p.seq_len, p.horizon)  # (B, H, N)
        dev = self.device
        return Batch(x=x.to(dev), y=y.to(dev), y_raw=y_raw.to(dev), y_mask=y_mask.to(dev))

    def starts_batches(
        self, split: str, generator: torch.Generator | None = None
    ) -> Iterator[np.ndarray]:
        starts = self.prepared.splits[split]
        size = self.batch_sizes[split]
        if split == "train" and generator is not None:
            order = torch.randperm(len(starts), generator=generator).numpy()
            starts = starts[order]
        for i in range(0, len(starts), size):
            yield starts[i : i + size]

    def batches(
        self,
        split: str,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """See :class:`trafficcast.models.trainer.BatchSource`: with ``shard = (rank, world_size)`` each
        global batch (the batch size is global) is cut into contiguous shares differing by at
        most one window, and a rank with an empty share gets the batch's first window as
        padding. Every rank draws the same permutation, so the shares partition the epoch."""
        for starts in self.starts_batches(split, generator):
            if shard is None:
                yield self.batch_at(starts)
                continue
            lo, hi = shard_bounds(len(starts), *shard)
            if hi > lo:
                yield self.batch_at(starts[lo:hi])
            else:
                batch = self.batch_at(starts[:1])
                batch.padding = True
                yield batch


# --------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------
def read_graph(
    sensor_ids: Sequence[str],
    distances: str | Path | None,
    adjacency: str | Path | None,
    threshold: float = 0.1,
    owner: str = "data",
    order: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, str] | None:
    """The road graph given as a distances file or an adjacency file: ``(ids, adj, source)``,
    ``adj`` float32 in the order of ``ids`` and ``source`` the file's name; None when neither
    is given (each caller has its own fallback).

    ``distances``: the Gaussian-kernel adjacency built in the order of ``sensor_ids`` (the
    threshold as in :func:`graph.build_adjacency`). ``adjacency``: the stored matrix in its own
    order, refused with a :class:`DataInputError` naming the file unless it has exactly the
    sensors of ``sensor_ids``; ``owner`` says whose sensors those are ("data", "model"). A
    ``.csv`` adjacency is a dense N×N matrix of weights (:func:`graph.read_dense_matrix`): in
    the order of its header when it has one, else of ``order`` (a ``--sensor-ids`` file), else
    of ``sensor_ids``.

    Shapes: ``adj (N, N)`` with ``N == len(sensor_ids)``.
    """
    if distances is not None:
        adj = build_adjacency(read_distances(distances), list(sensor_ids), threshold=threshold)
        return list(sensor_ids), np.asarray(adj, dtype=np.float32), str(distances)
    if adjacency is None:
        return None
    if Path(adjacency).suffix.lower() == ".csv":
        ids, adj = _dense_adjacency(adjacency, sensor_ids, order, owner)
    else:
        ids, adj = load_adjacency(adjacency)
    wanted, graph_ids = set(sensor_ids), set(ids)
    if wanted != graph_ids:
        only_owner = [s for s in sensor_ids if s not in graph_ids]
        only_graph = [s for s in ids if s not in wanted]
        example = (only_owner or only_graph)[:3]
        raise DataInputError(
            f"{adjacency}: the graph's sensors don't match the {owner}'s: {len(only_owner)} of "
            f"{len(sensor_ids)} {owner} sensors are not in the graph and {len(only_graph)} of "
            f"{len(ids)} graph sensors are not in the {owner} (e.g. {', '.join(example)})"
        )
    return list(ids), np.asarray(adj, dtype=np.float32), str(adjacency)


def _dense_adjacency(
    path: str | Path, sensor_ids: Sequence[str], order: Sequence[str] | None, owner: str
) -> tuple[list[str], np.ndarray]:
    """A dense weight matrix and its sensor order (see :func:`read_graph`).

    Shapes: returns ids (N) and ``(N, N)`` float32.
    """
    header, adj = read_dense_matrix(path, what="weights")
    if header is not None:
        if order is not None and list(order) != header:
            raise DataInputError(
                f"{path}: the matrix's header lists other sensors than --sensor-ids, or another "
                "order"
            )
        return header, adj.astype(np.float32)
    ids = list(order) if order is not None else list(sensor_ids)
    if len(ids) != len(adj):
        whose = "--sensor-ids lists" if order is not None else f"the {owner} has"
        raise DataInputError(
            f"{path}: the matrix is {len(adj)} x {len(adj)} but {whose} {len(ids)} sensors"
        )
    return ids, adj.astype(np.float32)


def load_graph_for(
    speeds: SpeedData,
    distances: str | Path | None,
    adjacency: str | Path | None,
    threshold: float = 0.1,
    order: Sequence[str] | None = None,
) -> tuple[SpeedData, np.ndarray, str]:
    """The adjacency in the data's sensor order (the data reordered to the graph's if needed);
    ``order``: the sensor order of a dense matrix without a header (:func:`read_graph`)."""
    graph = read_graph(speeds.sensor_ids, distances, adjacency, threshold, order=order)
    if graph is None:
        raise ConfigError("give the graph with --distances D.csv or --adjacency ADJ")
    ids, adj, source = graph
    if ids != list(speeds.sensor_ids):
        speeds = speeds.select_sensors(ids)
    return speeds, adj, source


def torch_supports(adj: np.ndarray, filter_type: str) -> list[torch.Tensor]:
    return [to_torch_sparse_csr(s) for s in compute_supports(adj, filter_type)]


# --------------------------------------------------------------------------------------------
# Checks and identity
# --------------------------------------------------------------------------------------------
def data_fingerprint(speeds: SpeedData) -> str:
    h = hashlib.sha256()
    h.update(",".join(speeds.sensor_ids).encode())
    h.update(np.ascontiguousarray(speeds.index.asi8).tobytes())
    h.update(np.ascontiguousarray(speeds.values).tobytes())
    return h.hexdigest()[:16]


def check_data_fits(speeds: SpeedData, config: RunConfig, source: str) -> None:
    m = config.model
    if m.num_nodes is not None and m.num_nodes != speeds.num_sensors:
        raise ConfigError(
            f"model.num_nodes = {m.num_nodes} but {source} has {speeds.num_sensors} sensors"
        )


def checkpoint_speeds(
    payload: dict[str, Any],
    data: str | Path | None,
    speeds: SpeedData | None,
    start: str | None = None,
    freq_minutes: int | None = None,
    calendar: str | None = None,
) -> SpeedData:
    """The speeds a checkpoint is applied to, in the model's sensor order: ``speeds``, else read
    from ``data`` (``start``/``freq_minutes`` for a file without timestamps), else from the file
    the model was trained on (with the start it was given, if it had no timestamps). Read with
    the checkpoint's missing-value rule, and with ``calendar`` or else the calendar the model
    was trained under (the days the data covers). Refused (one line) when the model's sensors are not all
    there or the data's frequency is another."""
    if speeds is None:
        if data is None:
            path = payload["data"]["path"]
            if not Path(path).exists():
                raise DataInputError(
                    f"the run was trained on {path}, which is not there any more: give --data"
                )
            if payload["data"].get("timestamps") is False:
                start, freq_minutes = payload["data"]["start"], int(payload["freq_minutes"])
        else:
            path = data
        speeds = read_speeds(
            path,
            start=start,
            freq_minutes=freq_minutes,
            missing=missing_rule(payload),
            calendar=calendar if calendar is not None else payload["data"].get("calendar"),
        )
    ids = payload["sensor_ids"]
    missing = [s for s in ids if s not in set(speeds.sensor_ids)]
    if missing:
        raise DataInputError(
            f"{speeds.source}: {len(missing)} of the model's {len(ids)} sensors are not in the data "
            f"(e.g. {', '.join(missing[:3])})"
        )
    if list(speeds.sensor_ids) != list(ids):
        speeds = speeds.select_sensors(ids)
    if int(speeds.freq_minutes) != int(payload["freq_minutes"]):
        raise DataInputError(
            f"{speeds.source}: data every {speeds.freq_minutes} min, the model was trained on "
            f"{payload['freq_minutes']}-minute data"
        )
    return speeds
