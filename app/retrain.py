"""The batch retraining job behind ``trafficcast retrain``: champion / challenger on a registry.

One run, holding the registry's lock throughout:

1. Clean what an interrupted writer left (partial version builds, pointer temp files).
2. Resume the interrupted job in ``REGISTRY/staging/`` if there is one with the same options, on
   the data snapshot it started with; otherwise start afresh: merge ``--data`` with the readings
   the service stored (``--observations``; where both have a reading for the same sensor and time,
   the store's wins: it is the newer), and snapshot the result and the graph into staging.
3. Train the challenger with :func:`app.pipeline.train_run` (``resume=True``: the trainer's state
   file, written after every epoch, continues a killed run), optionally warm-started from the
   champion.
4. Publish the challenger as a new immutable version (atomically; see :mod:`app.registry`).
5. Score the champion on the same holdout (the last test-fraction of the same merged data, so
   the most recent readings) and promote the challenger only if its mean MAE over the horizon is
   lower by ``margin`` (a fraction: 0.01 = 1 %), or with ``force``.
6. Prune old versions, write the summary, remove staging.

A job killed anywhere leaves the registry valid: the pointer still names the old champion until
the one atomic rename that promotes the new one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.fsutil import atomic_write_json, atomic_write_text
from app.registry import Registry, RegistryError, fault_point, now_iso
from data import SpeedData, read_speeds, write_speeds
from data.errors import DataInputError
from models.config import RunConfig
from models.distributed import DistContext, distributed_session, env_world_size
from models.errors import ConfigError

EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_KEPT = 3
EXIT_BUSY = 4
EXIT_CODES = {
    "promoted": EXIT_PROMOTED,
    "failed": EXIT_FAILED,
    "bad_input": EXIT_BAD_INPUT,
    "kept": EXIT_KEPT,
    "busy": EXIT_BUSY,
}

# Readings further apart than this would make the merged series mostly an empty grid.
MAX_GAP = pd.Timedelta(days=7)
STAGES = ("training", "trained", "published", "done")


@dataclass
class RetrainOptions:
    registry: Path
    data: Path
    observations: Path | None = None
    config: Path | None = None
    epochs: int | None = None
    distances: Path | None = None
    adjacency: Path | None = None
    threshold: float = 0.1
    margin: float = 0.01
    force: bool = False
    warm_start: bool = False
    keep: int = 5
    progress: bool = False

    def __post_init__(self) -> None:
        if not (0.0 <= self.margin < 1.0) or not math.isfinite(self.margin):
            raise ConfigError(f"--margin = {self.margin} must be a fraction in [0, 1)")
        if self.keep < 1:
            raise ConfigError(f"--keep = {self.keep} must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs = {self.epochs} must be >= 1")


# --------------------------------------------------------------------------------------------
# Data: the file merged with the service's observations
# --------------------------------------------------------------------------------------------
def merge_observations(speeds: SpeedData, db: Path) -> tuple[SpeedData, dict[str, Any]]:
    """``speeds`` extended and overridden by the readings in the observation store ``db``.

    The store's readings win where both have one (same sensor, same time). Sensors the store has
    but the file lacks are left out (the model's sensors come from the file and the graph), and
    said so; readings off the file's time grid are left out. The grid runs from the earlier start
    to the later end; a gap over :data:`MAX_GAP` is refused.

    Shapes: ``speeds`` ``(T, N)`` -> ``(T', N)`` with ``T' >= T``.
    """
    from app.observations import read_readings

    readings = read_readings(db)
    info: dict[str, Any] = {"path": str(db), "readings": 0, "overridden": 0, "new_steps": 0}
    if readings.empty:
        return speeds, info
    known = set(speeds.sensor_ids)
    store_sensors = sorted(set(readings["sensor_id"]))
    unknown = [s for s in store_sensors if s not in known]
    if len(unknown) == len(store_sensors):
        raise DataInputError(
            f"{db}: none of its {len(store_sensors)} sensors is in {speeds.source} "
            f"(e.g. {', '.join(unknown[:3])}): the observations belong to another sensor network"
        )
    if unknown:
        info["ignored_sensors"] = len(unknown)
        info["ignored_sensor_examples"] = unknown[:5]
        readings = readings[readings["sensor_id"].isin(known)]
    freq_ns = pd.Timedelta(minutes=speeds.freq_minutes).value
    origin = speeds.index[0].value
    stamps_ns = readings["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    on_grid = (stamps_ns - origin) % freq_ns == 0
    if not on_grid.all():
        info["off_grid"] = int((~on_grid).sum())
        readings, stamps_ns = readings[on_grid], stamps_ns[on_grid]
    if len(readings) == 0:
        return speeds, info
    # Gaps: the file is regular, so only the readings outside it can leave one.
    times = np.union1d(np.unique(stamps_ns), speeds.index.asi8)
    gaps = np.diff(times)
    if len(gaps) and gaps.max() > MAX_GAP.value:
        k = int(np.argmax(gaps))
        raise DataInputError(
            f"{db}: {pd.Timedelta(int(gaps[k]))} without a reading between "
            f"{pd.Timestamp(times[k])} and {pd.Timestamp(times[k + 1])} ({speeds.source} and the "
            f"store together); the limit is {MAX_GAP.days} days: give a --data file that reaches "
            "the store's readings"
        )
    start, end = int(times[0]), int(times[-1])
    index = pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=f"{speeds.freq_minutes}min")
    values = np.zeros((len(index), speeds.num_sensors), dtype=np.float32)  # (T', N)
    mask = np.zeros((len(index), speeds.num_sensors), dtype=bool)
    offset = (speeds.index[0].value - start) // freq_ns
    values[offset : offset + speeds.num_steps] = speeds.values
    mask[offset : offset + speeds.num_steps] = speeds.mask
    rows = (stamps_ns - start) // freq_ns
    column = {sid: k for k, sid in enumerate(speeds.sensor_ids)}
    cols = readings["sensor_id"].map(column).to_numpy(dtype=np.int64)
    info["readings"] = int(len(rows))
    info["overridden"] = int(mask[rows, cols].sum())
    values[rows, cols] = readings["speed"].to_numpy(dtype=np.float32)
    mask[rows, cols] = True
    info["new_steps"] = int(len(index) - speeds.num_steps)
    merged = SpeedData(
        index=index,
        sensor_ids=list(speeds.sensor_ids),
        values=values,
        mask=mask,
        freq_minutes=speeds.freq_minutes,
        source=f"{speeds.source} + {db}",
    )
    return merged, info


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------
class _Job:
    """``staging/job.json``: where an interrupted job got to (replaced atomically at each stage)."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.state = state

    @property
    def stage(self) -> str:
        return str(self.state.get("stage"))

    def advance(self, stage: str, **fields: Any) -> None:
        self.state.update(fields)
        self.state["stage"] = stage
        atomic_write_json(self.path, self.state)


def _options_key(opts: RetrainOptions, config: RunConfig, graph_sha: str, champion: str | None):
    """What makes two runs the same job: an interrupted job is resumed only if this matches."""
    body = {
        "data": str(Path(opts.data).resolve()),
        "observations": None if opts.observations is None else str(opts.observations.resolve()),
        "config": config.to_dict(),
        "graph": graph_sha,
        "warm_start": opts.warm_start,
        "champion": champion,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_graph(
    opts: RetrainOptions, speeds: SpeedData, champion_dir: Path | None
) -> tuple[list[str], np.ndarray, str]:
    """The adjacency: --distances / --adjacency, else the champion's, else the bundled METR-LA
    graph when the data has exactly its sensors."""
    from graph import build_adjacency, load_adjacency, read_distances

    if opts.distances is not None:
        adj = build_adjacency(read_distances(opts.distances), speeds.sensor_ids, opts.threshold)
        return list(speeds.sensor_ids), np.asarray(adj, dtype=np.float32), str(opts.distances)
    if opts.adjacency is not None:
        ids, adj = load_adjacency(opts.adjacency)
        return ids, adj, str(opts.adjacency)
    if champion_dir is not None and (champion_dir / "graph.npz").is_file():
        ids, adj = load_adjacency(champion_dir / "graph.npz")
        return ids, adj, f"{champion_dir.name}/graph.npz"
    from data import sample_adjacency_pkl_path

    ids, adj = load_adjacency(sample_adjacency_pkl_path())
    if set(ids) == set(speeds.sensor_ids):
        return ids, adj, "bundled METR-LA graph"
    raise ConfigError(
        f"{opts.registry}: the registry has no version to take the road graph from and "
        f"{opts.data} is not the METR-LA sensor set: give --distances D.csv or --adjacency ADJ"
    )


def _mean_mae(report: dict[str, Any]) -> float | None:
    maes = [v for v in (report.get("mae_by_step") or {}).get("dcrnn") or [] if v is not None]
    return round(float(np.mean(maes)), 6) if maes else None


def _comparable(champion: dict[str, Any], challenger: dict[str, Any]) -> str | None:
    """Why the champion cannot be scored on the challenger's holdout, or None if it can."""
    a, b = set(champion["sensor_ids"]), set(challenger["sensor_ids"])
    if a != b:
        return (
            f"the sensors changed ({len(b - a)} added, {len(a - b)} gone), so the champion "
            "cannot be scored on the same holdout"
        )
    for key in ("seq_len", "horizon", "freq_minutes"):
        if champion[key] != challenger[key]:
            return f"{key} changed ({champion[key]} -> {challenger[key]})"
    ca, cb = champion["config"]["data"], challenger["config"]["data"]
    for key in ("train_fraction", "test_fraction"):
        if ca.get(key) != cb.get(key):
            return f"data.{key} changed ({ca.get(key)} -> {cb.get(key)}): another holdout"
    return None


def run_retrain(opts: RetrainOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the job; returns the summary (``status`` is promoted or kept; errors raise).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) rank 0 runs the job alone — the lock, the staging
    directory, publishing, the decision and the promotion — and the other ranks only join its
    training: rank 0 sends them the training job (as JSON), they run :func:`train_run` with it
    (which shards the batches), and they return the summary rank 0 sends at the end. If rank 0
    fails, torchrun stops the others.
    """
    if env_world_size() <= 1:
        return _run_retrain(opts, log, None)
    with _job_group() as ctx:
        if ctx.is_main:
            summary = _run_retrain(opts, log, ctx)
            ctx.broadcast_json({"summary": summary})
            return summary
        from app.pipeline import train_run

        while True:
            message = ctx.broadcast_json(None)
            if not isinstance(message, dict) or "summary" in message:
                return message["summary"] if isinstance(message, dict) else {}
            job = message["train"]
            train_run(
                data=job["data"],
                output=job["output"],
                adjacency=job["adjacency"],
                config=RunConfig.from_dict(job["config"]),
                resume=True,
                progress=False,
                log=lambda _message: None,
                init_from=job["init_from"],
            )


@contextmanager
def _job_group() -> Iterator[DistContext]:
    """The process group of a distributed retrain, for the whole job (not only its training).

    gloo carries the job's own messages (CPU tensors); with CUDA present, nccl carries the
    training's (``cpu:gloo,cuda:nccl``). :func:`train_run` finds the group and leaves it open.
    """
    import torch
    import torch.distributed as tdist

    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        )
    try:
        with distributed_session(torch.device("cpu")) as ctx:
            assert ctx is not None
            yield ctx
    except BaseException:
        if owns:
            tdist.destroy_process_group()
        raise
    if owns:
        gc.collect()
        tdist.barrier()
        tdist.destroy_process_group()


def _run_retrain(
    opts: RetrainOptions, log: Callable[[str], None], ctx: DistContext | None
) -> dict[str, Any]:
    """The job itself (on rank 0 when distributed: ``ctx`` then reaches the other ranks)."""
    from app.pipeline import evaluate_run, load_config, train_run
    from graph import save_adjacency
    from models.checkpoint import load_checkpoint

    started = time.perf_counter()
    registry = Registry(opts.registry)
    if registry.root.exists() and not registry.root.is_dir():
        raise RegistryError(f"{registry.root}: not a directory")
    registry.ensure()
    summary: dict[str, Any] = {"registry": str(registry.root), "started_at": now_iso()}
    with registry.lock("retrain"):
        removed = registry.clean_leftovers()
        if removed:
            log(f"removed what an interrupted job left: {', '.join(removed)}")
        staging = registry.staging_dir
        job_path = staging / "job.json"
        job: _Job | None = None
        resumed: dict[str, Any] | None = None
        if job_path.is_file():
            try:
                job = _Job(job_path, json.loads(job_path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                job = None
        pointer = registry.current()
        champion = pointer.version if pointer is not None else None
        if job is not None and champion is not None and champion == job.state.get("version"):
            # Killed after promoting its challenger: the champion is still the one it started with.
            champion = job.state.get("champion")
        champion_dir = registry.version_dir(champion) if champion else None
        if champion is not None:
            problems = registry.verify_version(champion)
            if problems:
                raise RegistryError(
                    f"the current version is damaged ({'; '.join(problems)}); "
                    "`trafficcast registry rollback` or `promote` another one first"
                )
        if opts.config is not None:
            config = load_config(opts.config, opts.epochs)
        elif champion_dir is not None:
            config = RunConfig.from_yaml(champion_dir / "config.yaml")
            if opts.epochs is not None:
                config.train.epochs = opts.epochs
        else:
            config = load_config(None, opts.epochs)

        speeds_file = read_speeds(opts.data)
        graph_ids, adj, graph_source = _resolve_graph(opts, speeds_file, champion_dir)
        graph_sha = hashlib.sha256(
            ",".join(graph_ids).encode() + np.ascontiguousarray(adj).tobytes()
        ).hexdigest()[:16]
        key = _options_key(opts, config, graph_sha, champion)
        if job is not None and (job.state.get("key") != key or job.stage not in STAGES):
            log(f"discarding the interrupted job in {staging} (it was started with other options)")
            job = None
        if job is None:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            speeds, merge_info = speeds_file, None
            if opts.observations is not None:
                speeds, merge_info = merge_observations(speeds_file, opts.observations)
                if merge_info.get("ignored_sensors"):
                    log(
                        f"observations: {merge_info['ignored_sensors']} sensors of "
                        f"{opts.observations} are not in {opts.data} and were left out (e.g. "
                        f"{', '.join(merge_info['ignored_sensor_examples'][:3])})"
                    )
                log(
                    f"observations: {merge_info['readings']} readings merged "
                    f"({merge_info['overridden']} replaced the file's, "
                    f"{merge_info['new_steps']} new time steps)"
                )
            write_speeds(speeds, staging / "data.h5")
            save_adjacency(staging / "graph.npz", graph_ids, adj)
            from app.pipeline import data_fingerprint

            job = _Job(job_path, {})
            job.advance(
                "training",
                key=key,
                created_at=now_iso(),
                champion=champion,
                data={
                    "file": str(opts.data),
                    "observations": merge_info,
                    "graph": graph_source,
                    "fingerprint": data_fingerprint(speeds),
                    "start": str(speeds.index[0]),
                    "end": str(speeds.index[-1]),
                    "steps": speeds.num_steps,
                    "sensors": speeds.num_sensors,
                },
            )
        else:
            resumed = {"stage": job.stage, "epoch": None}
            log(f"resuming the interrupted job in {staging} (it got to stage {job.stage})")
        summary["job"] = {"created_at": job.state["created_at"], "data": job.state["data"]}
        champion = job.state.get("champion")
        champion_dir = registry.version_dir(champion) if champion else None
        run_dir = staging / "run"

        # ---- train ----------------------------------------------------------------------
        if job.stage == "training":

            def train_log(message: str) -> None:
                log(message)
                m = re.match(r"dcrnn: resumed after epoch (\d+)", message)
                if m and resumed is not None:
                    resumed["epoch"] = int(m.group(1))
                if message.startswith("dcrnn epoch 2/"):
                    # Logged just before epoch 2's state is saved: a kill here loses epoch 2.
                    fault_point("training")

            init_from = None
            if opts.warm_start and champion_dir is not None:
                init_from = champion_dir / "model.pt"
                log(f"warm start from {champion}")
            if ctx is not None:  # the other ranks train with this rank
                ctx.broadcast_json(
                    {
                        "train": {
                            "data": str(staging / "data.h5"),
                            "output": str(run_dir),
                            "adjacency": str(staging / "graph.npz"),
                            "config": config.to_dict(),
                            "init_from": None if init_from is None else str(init_from),
                        }
                    }
                )
            train_run(
                data=staging / "data.h5",
                output=run_dir,
                adjacency=staging / "graph.npz",
                config=config,
                resume=True,
                progress=opts.progress,
                log=train_log,
                init_from=init_from,
            )
            job.advance("trained", version=registry.next_version())
        challenger_report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        version = str(job.state["version"])

        # ---- publish ----------------------------------------------------------------------
        if job.stage == "trained":
            if registry.version_dir(version).exists():
                raise RegistryError(f"{registry.version_dir(version)}: already exists")
            files = {
                name: run_dir / name
                for name in ("model.pt", "fc_lstm.pt", "config.yaml", "report.json")
                if (run_dir / name).is_file()
            }
            files["graph.npz"] = staging / "graph.npz"
            if (run_dir / "train_log.jsonl").is_file():
                files["train_log.jsonl"] = run_dir / "train_log.jsonl"
            registry.publish(
                version,
                files,
                {
                    "data": job.state["data"],
                    "holdout_mae": _mean_mae(challenger_report),
                    "metrics": challenger_report["metrics"].get("dcrnn"),
                    "parent": champion,
                    "warm_start": bool(opts.warm_start and champion),
                    "training": (challenger_report.get("model") or {}).get("training"),
                },
            )
            log(f"published {version}")
            job.advance("published")

        # ---- decide -----------------------------------------------------------------------
        challenger_mae = _mean_mae(challenger_report)
        summary["challenger"] = {
            "version": version,
            "holdout_mae": challenger_mae,
            "metrics": challenger_report["metrics"].get("dcrnn"),
        }
        reason: str
        promote: bool
        current = registry.current()
        if current is not None and current.version == version:
            promote, reason = True, "already promoted by the interrupted run of this job"
        elif champion is None:
            promote, reason = True, "the registry had no version yet"
        else:
            assert champion_dir is not None
            challenger_payload = load_checkpoint(run_dir / "model.pt")
            champion_payload = load_checkpoint(champion_dir / "model.pt")
            why_not = _comparable(champion_payload, challenger_payload)
            champion_mae = None
            if why_not is None:
                champion_report = evaluate_run(
                    champion_dir,
                    speeds=read_speeds(staging / "data.h5"),
                    output=staging / "champion-report.json",
                    plots=False,
                )
                champion_mae = _mean_mae(champion_report)
                summary["champion"] = {
                    "version": champion,
                    "holdout_mae": champion_mae,
                    "metrics": champion_report["metrics"].get("dcrnn"),
                }
            else:
                summary["champion"] = {"version": champion, "holdout_mae": None}
            if why_not is None and (challenger_mae is None or champion_mae is None):
                why_not = "no finite holdout MAE to compare"
            if why_not is not None:
                promote = opts.force
                reason = f"{why_not}; " + ("promoted by --force" if promote else "use --force")
            else:
                assert challenger_mae is not None and champion_mae is not None
                better = challenger_mae <= champion_mae * (1.0 - opts.margin)
                change = 100.0 * (champion_mae - challenger_mae) / champion_mae
                summary["improvement_pct"] = round(change, 3)
                verdict = (
                    f"holdout MAE {challenger_mae:.4f} vs the champion's {champion_mae:.4f} "
                    f"({change:+.2f} %, {100 * opts.margin:g} % needed)"
                )
                promote = better or opts.force
                reason = verdict + ("" if better else (": promoted by --force" if promote else ""))
        summary["margin"] = opts.margin

        # ---- promote ----------------------------------------------------------------------
        if promote and (current is None or current.version != version):
            registry.set_current(version, reason)
            log(f"promoted {version}: {reason}")
        elif not promote:
            log(f"kept {champion}: {reason}")
        fault_point("after-promotion")
        pruned = registry.prune(opts.keep)
        if pruned:
            log(f"pruned {', '.join(pruned)} (keeping the {opts.keep} newest)")
        summary.update(
            status="promoted" if promote else "kept",
            reason=reason,
            current=registry.current().version,  # type: ignore[union-attr]
            resumed=resumed,
            pruned=pruned,
            finished_at=now_iso(),
            wall_s=round(time.perf_counter() - started, 2),
        )
        summary["exit_code"] = EXIT_CODES[summary["status"]]
        atomic_write_json(registry.summary_path, summary)
        shutil.rmtree(staging)
    return summary


def write_summary(path: Path | None, summary: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


def import_run(
    registry_dir: Path,
    run_dir: Path,
    distances: Path | None,
    adjacency: Path | None,
    threshold: float = 0.1,
    promote: bool = False,
) -> tuple[str, bool]:
    """Publish a run directory from ``trafficcast train`` as a new version (seeding a registry).

    The graph is stored with it so that later retrains need none. Returns the version and
    whether it was promoted.
    """
    from graph import build_adjacency, load_adjacency, read_distances, save_adjacency
    from models.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    model = run_dir / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(2, "no model.pt in the run directory", str(model))
    payload = load_checkpoint(model)
    ids = list(payload["sensor_ids"])
    if distances is not None:
        graph_ids, adj = ids, build_adjacency(read_distances(distances), ids, threshold)
    elif adjacency is not None:
        graph_ids, adj = load_adjacency(adjacency)
        if set(graph_ids) != set(ids):
            raise DataInputError(
                f"{adjacency}: the graph's sensors are not the model's ({len(graph_ids)} vs "
                f"{len(ids)}, {len(set(ids) - set(graph_ids))} of the model's missing)"
            )
    else:
        raise ConfigError("give the run's graph with --distances D.csv or --adjacency ADJ")
    registry = Registry(registry_dir).ensure()
    with registry.lock("import"):
        registry.clean_leftovers()
        version = registry.next_version()
        tmp_graph = registry.root / f".graph-{version}.npz"
        save_adjacency(tmp_graph, graph_ids, np.asarray(adj, dtype=np.float32))
        try:
            files = {
                name: run_dir / name
                for name in (
                    "model.pt",
                    "fc_lstm.pt",
                    "config.yaml",
                    "report.json",
                    "train_log.jsonl",
                )
                if (run_dir / name).is_file()
            }
            if "config.yaml" not in files:
                import yaml

                atomic_write_text(
                    tmp_graph.with_suffix(".yaml"),
                    yaml.safe_dump(payload["config"], sort_keys=False),
                )
                files["config.yaml"] = tmp_graph.with_suffix(".yaml")
            files["graph.npz"] = tmp_graph
            report: dict[str, Any] = {}
            if (run_dir / "report.json").is_file():
                report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
            data = dict(payload.get("data") or {})
            data["sensors"] = len(ids)
            registry.publish(
                version,
                files,
                {
                    "data": data,
                    "holdout_mae": _mean_mae(report),
                    "metrics": (report.get("metrics") or {}).get("dcrnn"),
                    "parent": None,
                    "imported_from": str(run_dir.resolve()),
                    "training": payload.get("training"),
                },
            )
        finally:
            tmp_graph.unlink(missing_ok=True)
            tmp_graph.with_suffix(".yaml").unlink(missing_ok=True)
        promoted = promote or registry.current() is None
        if promoted:
            registry.set_current(version, f"imported from {run_dir}")
    return version, promoted
