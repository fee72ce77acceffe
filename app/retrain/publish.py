"""Run directories made registry versions: the files a version holds, its holdout MAE, and
``trafficcast registry import`` (a run from ``trafficcast train`` seeding a registry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trafficcast.app.fsutil import atomic_write_text
from trafficcast.app.pipeline import CHECKPOINT_FILES, read_graph
from trafficcast.app.registry import Registry
from trafficcast.graph import save_adjacency
from trafficcast.models.checkpoint import load_checkpoint
from trafficcast.models.errors import ConfigError
from trafficcast.models.names import DCRNN_NAME

# The files of a run directory a version keeps, where the run has them (model.pt always).
RUN_FILES = (
    *CHECKPOINT_FILES.values(),
    "config.yaml",
    "report.json",
    "train_log.jsonl",
)


def published_files(run_dir: Path, graph: Path) -> dict[str, Path]:
    """A version's files (name -> source) from ``run_dir`` and the road graph file ``graph``."""
    files = {name: run_dir / name for name in RUN_FILES if (run_dir / name).is_file()}
    files["graph.npz"] = graph
    return files


def mean_mae(report: dict[str, Any]) -> float | None:
    """DCRNN's MAE averaged over the horizon steps of a ``report.json``; None without one."""
    maes = [v for v in (report.get("mae_by_step") or {}).get(DCRNN_NAME) or [] if v is not None]
    return round(float(np.mean(maes)), 6) if maes else None


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
    run_dir = Path(run_dir)
    model = run_dir / CHECKPOINT_FILES[DCRNN_NAME]
    if not model.is_file():
        raise FileNotFoundError(2, "no model.pt in the run directory", str(model))
    payload = load_checkpoint(model)
    ids = list(payload["sensor_ids"])
    graph = read_graph(ids, distances, adjacency, threshold, owner="model")
    if graph is None:
        raise ConfigError("give the run's graph with --distances D.csv or --adjacency ADJ")
    graph_ids, adj, _ = graph
    registry = Registry(registry_dir).ensure()
    with registry.lock("import"):
        registry.clean_leftovers()
        version = registry.next_version()
        tmp_graph = registry.root / f".graph-{version}.npz"
        save_adjacency(tmp_graph, graph_ids, adj)
        try:
            files = published_files(run_dir, tmp_graph)
            if "config.yaml" not in files:
                atomic_write_text(
                    tmp_graph.with_suffix(".yaml"),
                    yaml.safe_dump(payload["config"], sort_keys=False),
                )
                files["config.yaml"] = tmp_graph.with_suffix(".yaml")
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
                    "holdout_mae": mean_mae(report),
                    "metrics": (report.get("metrics") or {}).get(DCRNN_NAME),
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
