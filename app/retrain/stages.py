"""The retraining job's stages, each a function that takes what it needs of the job (its
:class:`JobContext`, the state kept in ``staging/job.json``) and returns what it adds.
:mod:`trafficcast.app.retrain.job` runs them in order and records in ``job.json`` the stage reached
(:data:`STAGES`), so that a killed job resumes at the first stage it had not finished:

1. :func:`snapshot_data`: the data merged with the observations, and the graph, written into
   staging; then ``"training"``.
2. :func:`train_challenger`: the challenger trained on the snapshot (a killed training goes on
   from its last saved epoch); then ``"trained"``, with the version it will be published as.
3. :func:`publish_challenger`: the challenger made an immutable version; then ``"published"``.
4. :func:`score`: champion and challenger on the same holdout, and the decision (recomputed by
   a resumed job).
5. :func:`promote`: the pointer moved if so decided, old versions pruned.

The job's fault points (:func:`trafficcast.app.registry.fault_point`) hang on the trainer's callbacks
(:class:`ChallengerProgress`) and on these stages, never on log text.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trafficcast.app.db import describe
from trafficcast.app.fsutil import atomic_write_json
from trafficcast.app.pipeline import (
    CHECKPOINT_FILES,
    TrainOptions,
    data_fingerprint,
    evaluate_run,
    train_run,
)
from trafficcast.app.registry import Registry, RegistryError, fault_point, now_iso
from trafficcast.app.retrain.merge import merge_observations
from trafficcast.app.retrain.options import RetrainOptions
from trafficcast.app.retrain.publish import mean_mae, published_files
from trafficcast.data import SpeedData, read_speeds, write_speeds
from trafficcast.graph import save_adjacency
from trafficcast.models.checkpoint import load_checkpoint
from trafficcast.models.config import RunConfig
from trafficcast.models.distributed import DistContext
from trafficcast.models.names import DCRNN_NAME
from trafficcast.models.trainer import EpochRecord, TrainerCallback

# The stages job.json records, in order: "training" once the data is snapshot, "trained" once
# the challenger is trained, "published" once it is a version. "done" is accepted from a job
# file and resumes like "published".
STAGES = ("training", "trained", "published", "done")


class JobFile:
    """``staging/job.json``: where an interrupted job got to (replaced atomically at each stage)."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.state = state

    @classmethod
    def read(cls, path: Path) -> JobFile | None:
        """The job file at ``path``; None when there is none or it cannot be read."""
        if not path.is_file():
            return None
        try:
            return cls(path, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    @property
    def stage(self) -> str:
        return str(self.state.get("stage"))

    def advance(self, stage: str, **fields: Any) -> None:
        self.state.update(fields)
        self.state["stage"] = stage
        atomic_write_json(self.path, self.state)


@dataclass
class JobContext:
    """What the stages share: the options, the registry, the resolved config, the champion the
    job started from (None on an empty registry), the log, and, distributed, the other ranks."""

    opts: RetrainOptions
    registry: Registry
    config: RunConfig
    champion: str | None
    log: Callable[[str], None]
    dist: DistContext | None

    @property
    def champion_dir(self) -> Path | None:
        return self.registry.version_dir(self.champion) if self.champion else None

    @property
    def staging(self) -> Path:
        return self.registry.staging_dir

    @property
    def data_path(self) -> Path:
        return self.staging / "data.h5"

    @property
    def graph_path(self) -> Path:
        return self.staging / "graph.npz"

    @property
    def run_dir(self) -> Path:
        return self.staging / "run"


# --------------------------------------------------------------------------------------------
# snapshot
# --------------------------------------------------------------------------------------------
def snapshot_data(
    job: JobContext, speeds: SpeedData, graph: tuple[list[str], np.ndarray, str], key: str
) -> dict[str, Any]:
    """Start the job in a fresh staging directory: ``speeds`` (the ``--data`` file) merged with
    the observations, and the graph ``(ids, adj, source)``, written there. Returns the job's
    fields: its options ``key``, creation time, champion and the snapshot's description."""
    opts = job.opts
    if job.staging.exists():
        shutil.rmtree(job.staging)
    job.staging.mkdir(parents=True)
    merge_info = None
    if opts.observations is not None:
        speeds, merge_info = merge_observations(speeds, opts.observations)
        if merge_info.get("ignored_sensors"):
            job.log(
                f"observations: {merge_info['ignored_sensors']} sensors of "
                f"{describe(opts.observations)} are not in {opts.data} and were left out (e.g. "
                f"{', '.join(merge_info['ignored_sensor_examples'][:3])})"
            )
        job.log(
            f"observations: {merge_info['readings']} readings merged "
            f"({merge_info['overridden']} replaced the file's, "
            f"{merge_info['new_steps']} new time steps)"
        )
    write_speeds(speeds, job.data_path)
    graph_ids, adj, graph_source = graph
    save_adjacency(job.graph_path, graph_ids, adj)
    return {
        "key": key,
        "created_at": now_iso(),
        "champion": job.champion,
        "data": {
            "file": str(opts.data),
            "observations": merge_info,
            "graph": graph_source,
            "fingerprint": data_fingerprint(speeds),
            "start": str(speeds.index[0]),
            "end": str(speeds.index[-1]),
            "steps": speeds.num_steps,
            "sensors": speeds.num_sensors,
        },
    }


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
class ChallengerProgress(TrainerCallback):
    """The job's hooks on the challenger's DCRNN training: where a resumed training went on
    from, and the ``training`` fault point."""

    def __init__(self) -> None:
        self.resumed_epoch: int | None = None

    def on_resumed(self, model: str, epoch: int, step: int) -> None:
        if model == DCRNN_NAME:
            self.resumed_epoch = epoch

    def on_epoch_end(self, model: str, record: EpochRecord) -> None:
        if model == DCRNN_NAME and record["epoch"] == 2:
            # Epoch 2's state is not saved yet: a kill here loses epoch 2.
            fault_point("training")


def train_challenger(job: JobContext) -> tuple[dict[str, Any], int | None]:
    """Train the challenger on the snapshot into ``staging/run`` (``resume``: a killed training
    goes on from its last saved epoch), warm-started from the champion if asked. Distributed,
    the other ranks are sent the training and join it.

    Returns the job's new field (the version the challenger will be published as) and the
    epoch a resumed training went on after (None when it started afresh).
    """
    init_from = None
    if job.opts.warm_start and job.champion_dir is not None:
        init_from = job.champion_dir / CHECKPOINT_FILES[DCRNN_NAME]
        job.log(f"warm start from {job.champion}")
    if job.dist is not None:  # the other ranks train with this rank
        job.dist.broadcast_json(
            {
                "train": {
                    "data": str(job.data_path),
                    "output": str(job.run_dir),
                    "adjacency": str(job.graph_path),
                    "config": job.config.to_dict(),
                    "init_from": None if init_from is None else str(init_from),
                }
            }
        )
    progress = ChallengerProgress()
    train_run(
        TrainOptions(
            data=job.data_path,
            output=job.run_dir,
            adjacency=job.graph_path,
            config=job.config,
            resume=True,
            progress=job.opts.progress,
            log=job.log,
            init_from=init_from,
            callbacks=(progress,),
            calendar=job.opts.calendar,
        )
    )
    return {"version": job.registry.next_version()}, progress.resumed_epoch


def challenger_report(job: JobContext) -> dict[str, Any]:
    """The trained challenger's ``report.json`` (its holdout scores)."""
    return json.loads((job.run_dir / "report.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# publish
# --------------------------------------------------------------------------------------------
def publish_challenger(job: JobContext, state: dict[str, Any], report: dict[str, Any]) -> None:
    """Publish the challenger as version ``state["version"]``, with the graph and a manifest
    that names its data, holdout scores and parent (the champion). Adds nothing to the job."""
    version = str(state["version"])
    registry = job.registry
    if registry.version_dir(version).exists():
        raise RegistryError(f"{registry.version_dir(version)}: already exists")
    registry.publish(
        version,
        published_files(job.run_dir, job.graph_path),
        {
            "data": state["data"],
            "holdout_mae": mean_mae(report),
            "metrics": report["metrics"].get(DCRNN_NAME),
            "parent": job.champion,
            "warm_start": bool(job.opts.warm_start and job.champion),
            "training": (report.get("model") or {}).get("training"),
        },
    )
    job.log(f"published {version}")


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------
@dataclass
class Decision:
    """Whether to promote the challenger, why, and the scores behind it (the summary's
    ``challenger``, ``champion`` and ``improvement_pct`` entries, those that apply)."""

    promote: bool
    reason: str
    scores: dict[str, Any]


def score(job: JobContext, version: str, report: dict[str, Any]) -> Decision:
    """Score the champion on the challenger's holdout (the last test fraction of the same
    snapshot) and decide: promote if the challenger's mean MAE is lower by the margin, or with
    ``--force``; a challenger that an interrupted run already promoted stays promoted."""
    challenger_mae = mean_mae(report)
    scores: dict[str, Any] = {
        "challenger": {
            "version": version,
            "holdout_mae": challenger_mae,
            "metrics": report["metrics"].get(DCRNN_NAME),
        }
    }
    current = job.registry.current()
    if current is not None and current.version == version:
        return Decision(True, "already promoted by the interrupted run of this job", scores)
    champion_dir = job.champion_dir
    if champion_dir is None:
        return Decision(True, "the registry had no version yet", scores)
    why_not, scores["champion"] = _score_champion(job, champion_dir)
    champion_mae = scores["champion"]["holdout_mae"]
    force = job.opts.force
    if why_not is not None or challenger_mae is None or champion_mae is None:
        why_not = why_not or "no finite holdout MAE to compare"
        return Decision(
            force, f"{why_not}; " + ("promoted by --force" if force else "use --force"), scores
        )
    margin = job.opts.margin
    better = challenger_mae <= champion_mae * (1.0 - margin)
    change = 100.0 * (champion_mae - challenger_mae) / champion_mae
    scores["improvement_pct"] = round(change, 3)
    verdict = (
        f"holdout MAE {challenger_mae:.4f} vs the champion's {champion_mae:.4f} "
        f"({change:+.2f} %, {100 * margin:g} % needed)"
    )
    promoted = better or force
    return Decision(
        promoted, verdict + ("" if better else (": promoted by --force" if force else "")), scores
    )


def _score_champion(job: JobContext, champion_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """Why the champion (in ``champion_dir``) cannot be scored on the challenger's holdout (None
    if it can), and its entry in the summary: its version and mean holdout MAE (None when not
    scored)."""
    model_file = CHECKPOINT_FILES[DCRNN_NAME]
    why_not = _comparable(
        load_checkpoint(champion_dir / model_file), load_checkpoint(job.run_dir / model_file)
    )
    if why_not is not None:
        return why_not, {"version": job.champion, "holdout_mae": None}
    champion_report = evaluate_run(
        champion_dir,
        speeds=read_speeds(
            job.data_path, missing=job.config.data.missing_rule, calendar=job.opts.calendar
        ),
        output=job.staging / "champion-report.json",
        plots=False,
    )
    return None, {
        "version": job.champion,
        "holdout_mae": mean_mae(champion_report),
        "metrics": champion_report["metrics"].get(DCRNN_NAME),
    }


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


# --------------------------------------------------------------------------------------------
# promote
# --------------------------------------------------------------------------------------------
def promote(job: JobContext, version: str, decision: Decision) -> list[str]:
    """Point ``current`` at the challenger if so decided (unless an interrupted run already
    did), then prune old versions. Returns the pruned versions."""
    registry, opts = job.registry, job.opts
    current = registry.current()
    if decision.promote and (current is None or current.version != version):
        registry.set_current(version, decision.reason)
        job.log(f"promoted {version}: {decision.reason}")
    elif not decision.promote:
        job.log(f"kept {job.champion}: {decision.reason}")
    fault_point("after-promotion")
    pruned = registry.prune(opts.keep)
    if pruned:
        job.log(f"pruned {', '.join(pruned)} (keeping the {opts.keep} newest)")
    return pruned
