"""Running the retraining job: the registry's lock, resuming or starting the job in staging,
the stages of :mod:`trafficcast.app.retrain.stages` in order, and the summary; distributed, the other ranks'
part."""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from trafficcast.app.db import describe, is_url
from trafficcast.app.fsutil import atomic_write_json, atomic_write_text
from trafficcast.app.pipeline import TrainOptions, load_config, read_graph, train_run
from trafficcast.app.registry import Registry, RegistryError, now_iso
from trafficcast.app.retrain.live import champion_live, live_gate
from trafficcast.app.retrain.options import EXIT_CODES, RetrainOptions
from trafficcast.app.retrain.stages import (
    STAGES,
    JobContext,
    JobFile,
    challenger_report,
    promote,
    publish_challenger,
    score,
    snapshot_data,
    train_challenger,
)
from trafficcast.data import SpeedData, read_speeds, sample_adjacency_pkl_path
from trafficcast.graph import load_adjacency
from trafficcast.models.config import RunConfig
from trafficcast.models.distributed import DistContext, distributed_session, env_world_size
from trafficcast.models.errors import ConfigError, TrainingError
from trafficcast.models.trainer import no_log


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
        while True:
            message = ctx.broadcast_json(None)
            if not isinstance(message, dict) or "summary" in message:
                return message["summary"] if isinstance(message, dict) else {}
            job = message["train"]
            train_run(
                TrainOptions(
                    data=job["data"],
                    output=job["output"],
                    adjacency=job["adjacency"],
                    config=RunConfig.from_dict(job["config"]),
                    resume=True,
                    progress=False,
                    log=no_log,
                    init_from=job["init_from"],
                )
            )


@contextmanager
def _job_group() -> Iterator[DistContext]:
    """The process group of a distributed retrain, for the whole job (not only its training).

    gloo carries the job's own messages (CPU tensors); with CUDA present, nccl carries the
    training's (``cpu:gloo,cuda:nccl``). :func:`train_run` finds the group and leaves it open.
    """
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        )
    try:
        with distributed_session(torch.device("cpu")) as ctx:
            if ctx is None:  # the group was initialised above, so the session is distributed
                raise TrainingError("the retrain's process group is not initialised")
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
    opts: RetrainOptions, log: Callable[[str], None], dist: DistContext | None
) -> dict[str, Any]:
    """The job itself (on rank 0 when distributed: ``dist`` then reaches the other ranks)."""
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
        summary["live"] = champion_live(opts, registry)
        if summary["live"] is not None:
            log(_describe_live(summary["live"]))
        why_not = live_gate(opts, summary["live"])
        if why_not is not None:
            log(
                f"kept {summary['live']['version'] if summary['live'] else 'the champion'}: {why_not}"
            )
            return _finish(summary, registry, started, status="kept", reason=why_not)
        job, job_file, resumed = _start_or_resume(opts, registry, log, dist)
        summary["job"] = {
            "created_at": job_file.state["created_at"],
            "data": job_file.state["data"],
        }
        if job_file.stage == "training":
            fields, resumed_epoch = train_challenger(job)
            if resumed is not None:
                resumed["epoch"] = resumed_epoch
            job_file.advance("trained", **fields)
        report = challenger_report(job)
        version = str(job_file.state["version"])
        if job_file.stage == "trained":
            publish_challenger(job, job_file.state, report)
            job_file.advance("published")
        decision = score(job, version, report)
        summary.update(decision.scores)
        summary["margin"] = opts.margin
        pruned = promote(job, version, decision)
        summary.update(resumed=resumed, pruned=pruned)
        _finish(
            summary,
            registry,
            started,
            status="promoted" if decision.promote else "kept",
            reason=decision.reason,
        )
        shutil.rmtree(job.staging)
    return summary


def _finish(
    summary: dict[str, Any], registry: Registry, started: float, status: str, reason: str
) -> dict[str, Any]:
    """Complete the summary with the outcome and write it to the registry."""
    current = registry.current()
    summary.update(
        status=status,
        reason=reason,
        current=None if current is None else current.version,
        finished_at=now_iso(),
        wall_s=round(time.perf_counter() - started, 2),
    )
    summary["exit_code"] = EXIT_CODES[status]
    atomic_write_json(registry.summary_path, summary)
    return summary


def _describe_live(live: dict[str, Any]) -> str:
    by_horizon = ", ".join(
        f"{h} {v['mae']:.3f}" for h, v in live["horizons"].items() if v["mae"] is not None
    )
    mae = "none scored" if live["mae"] is None else f"{live['mae']:.4f}"
    return (
        f"live accuracy of {live['version']} over the last day (to "
        f"{live['latest_observation']}): MAE {mae}" + (f" ({by_horizon})" if by_horizon else "")
    )


def _start_or_resume(
    opts: RetrainOptions,
    registry: Registry,
    log: Callable[[str], None],
    dist: DistContext | None,
) -> tuple[JobContext, JobFile, dict[str, Any] | None]:
    """Resume the interrupted job in staging if it was started with the same options (the same
    data file, observations, config, graph, warm start and champion), else snapshot the data
    for a new one. Returns the job's context, its file, and for a resumed job the summary's
    ``resumed`` (the stage it got to; its ``epoch`` is filled in by the training)."""
    job_file = JobFile.read(registry.staging_dir / "job.json")
    champion = _champion(registry, job_file)
    champion_dir = registry.version_dir(champion) if champion else None
    config = _job_config(opts, champion_dir)
    speeds = read_speeds(
        opts.data,
        start=opts.start,
        freq_minutes=opts.freq_minutes,
        missing=config.data.missing_rule,
        calendar=opts.calendar,
    )
    graph = _resolve_graph(opts, speeds, champion_dir)
    key = _options_key(opts, config, _graph_sha(graph[0], graph[1]), champion)
    if job_file is not None and (job_file.state.get("key") != key or job_file.stage not in STAGES):
        log(
            f"discarding the interrupted job in {registry.staging_dir} "
            "(it was started with other options)"
        )
        job_file = None
    if job_file is not None:
        log(
            f"resuming the interrupted job in {registry.staging_dir} (it got to stage {job_file.stage})"
        )
        job = JobContext(opts, registry, config, job_file.state.get("champion"), log, dist)
        return job, job_file, {"stage": job_file.stage, "epoch": None}
    job = JobContext(opts, registry, config, champion, log, dist)
    job_file = JobFile(registry.staging_dir / "job.json", {})
    job_file.advance("training", **snapshot_data(job, speeds, graph, key))
    return job, job_file, None


def _champion(registry: Registry, job_file: JobFile | None) -> str | None:
    """The version the job competes with: the current one, or the one an interrupted run of
    the job started with if that run already promoted its challenger. Refused if damaged."""
    pointer = registry.current()
    champion = pointer.version if pointer is not None else None
    if job_file is not None and champion is not None and champion == job_file.state.get("version"):
        # Killed after promoting its challenger: the champion is still the one it started with.
        champion = job_file.state.get("champion")
    if champion is not None:
        problems = registry.verify_version(champion)
        if problems:
            raise RegistryError(
                f"the current version is damaged ({'; '.join(problems)}); "
                "`trafficcast registry rollback` or `promote` another one first"
            )
    return champion


def _job_config(opts: RetrainOptions, champion_dir: Path | None) -> RunConfig:
    """``--config``, else the champion's config, else the defaults; ``--epochs`` over each."""
    if opts.config is not None:
        return load_config(opts.config, opts.epochs)
    if champion_dir is not None:
        config = RunConfig.from_yaml(champion_dir / "config.yaml")
        if opts.epochs is not None:
            config.train.epochs = opts.epochs
        return config
    return load_config(None, opts.epochs)


def _resolve_graph(
    opts: RetrainOptions, speeds: SpeedData, champion_dir: Path | None
) -> tuple[list[str], np.ndarray, str]:
    """The adjacency: --distances / --adjacency, else the champion's, else the bundled METR-LA
    graph when the data has exactly its sensors."""
    given = read_graph(speeds.sensor_ids, opts.distances, opts.adjacency, opts.threshold)
    if given is not None:
        return given
    if champion_dir is not None and (champion_dir / "graph.npz").is_file():
        ids, adj = load_adjacency(champion_dir / "graph.npz")
        return ids, adj, f"{champion_dir.name}/graph.npz"
    ids, adj = load_adjacency(sample_adjacency_pkl_path())
    if set(ids) == set(speeds.sensor_ids):
        return ids, adj, "bundled METR-LA graph"
    raise ConfigError(
        f"{opts.registry}: the registry has no version to take the road graph from and "
        f"{opts.data} is not the METR-LA sensor set: give --distances D.csv or --adjacency ADJ"
    )


def _graph_sha(ids: list[str], adj: np.ndarray) -> str:
    digest = hashlib.sha256(",".join(ids).encode() + np.ascontiguousarray(adj).tobytes())
    return digest.hexdigest()[:16]


def _location_key(where: str | Path | None) -> str | None:
    # A URL is named without its password: the key is written to job.json.
    if where is None:
        return None
    return describe(where) if is_url(where) else str(Path(where).resolve())


def _options_key(opts: RetrainOptions, config: RunConfig, graph_sha: str, champion: str | None):
    """What makes two runs the same job: an interrupted job is resumed only if this matches."""
    body = {
        "data": str(Path(opts.data).resolve()),
        "observations": _location_key(opts.observations),
        "config": config.to_dict(),
        "graph": graph_sha,
        "warm_start": opts.warm_start,
        "champion": champion,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_summary(path: Path | None, summary: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
