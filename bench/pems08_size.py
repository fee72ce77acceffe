"""A PEMS08-sized run from the released files to a report: time and peak memory per stage.

Not a test. PEMS08 (ASTGCN's release) is 170 sensors x 17,856 five-minute steps (62 days,
2016-07-01 to 2016-08-31) x 3 channels (flow, occupancy, speed) in ``PEMS08.npz`` and its road
links in ``distance.csv`` (``from,to,cost``). With ``--npz``/``--distances`` the real files are
used; without them a stand-in of the same shape is written first: the synthetic road network's
speeds (:func:`trafficcast.data.make_synthetic`, 170 sensors, 62 days), turned into flows and
occupancies (below), and each sensor's two nearest road links as ``distance.csv``.

Then each stage runs as its own child process, the commands a user types::

    trafficcast import npz --npz PEMS08.npz --channel flow --distances distance.csv ...
    trafficcast train --data imported/speeds.h5 (--adjacency | --distances) ... --epochs 1
    trafficcast evaluate --run run --output eval/report.json

and is timed (wall clock, and the child's CPU time) and measured (peak RSS of that child
alone, from ``os.wait4``: the kernel's high-water mark of the process, its allocator restart
included). The training config is the literature's protocol for PEMS0x
(``data.train_fraction: 0.6``, ``test_fraction: 0.2``; flow, where a 0 is a reading) and
DCRNN at the paper's size (``--model paper``: 64 units, 2 layers, K = 2) or a small one
(``--model small``: 16 units, 1 layer) for slow machines. Only DCRNN trains (the baselines are
switched off); ``train`` ends with its own evaluation and calibration, as it always does, so its
figure includes one test pass.

    python bench/pems08_size.py --model small
    python bench/pems08_size.py --model paper --npz PEMS08.npz --distances distance.csv

Prints one JSON line per figure and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trafficcast.app.allocator import allocator_for  # noqa: E402
from trafficcast.data import make_synthetic  # noqa: E402

SENSORS, DAYS, START = 170, 62, "2016-07-01T00:00"
MODELS = {
    "paper": "  rnn_units: 64\n  num_rnn_layers: 2\n",
    "small": "  rnn_units: 16\n  num_rnn_layers: 1\n",
}
# Flow in vehicles per 5 minutes at a sensor's capacity (about 1,800 vehicles an hour on each of
# three lanes), and jam density (vehicles per mile over the three lanes) for the occupancy.
_CAPACITY_PER_STEP = 450.0
_JAM_DENSITY_PER_MILE = 600.0


def emit(metric: str, value: float, **extra: object) -> None:
    print(json.dumps({"metric": metric, "value": round(float(value), 4), **extra}), flush=True)


def write_stand_in(work: Path, seed: int = 0) -> tuple[Path, Path]:
    """``PEMS08.npz`` (``data``: ``(17856, 170, 3)`` flow, occupancy, speed) and
    ``distance.csv`` of the same layout as the release, from synthetic speeds.

    Flow follows a daily demand (low at night, two peaks) and, where the speed falls below
    half the sensor's free-flow speed (congestion), the Greenshields capacity
    ``4 x (1 - x)`` of the speed ratio ``x``; counts are Poisson. A missing reading is 0 in
    every channel, as the released files hold it.
    """
    synth = make_synthetic(num_sensors=SENSORS, num_days=DAYS, seed=seed, start=START)
    speed = synth.speeds.values.astype(np.float64)  # (T, N), mph, 0 where missing
    mask = synth.speeds.mask
    free_flow = np.nanmax(np.where(mask, speed, np.nan), axis=0)  # (N,)
    ratio = np.clip(speed / free_flow, 0.0, 1.0)
    hour = synth.speeds.index.hour.to_numpy() + synth.speeds.index.minute.to_numpy() / 60
    peaks = np.exp(-(((hour - 8.0) / 1.5) ** 2)) + 0.8 * np.exp(-(((hour - 17.5) / 2.0) ** 2))
    demand = (0.12 + 0.45 * ((hour >= 5) & (hour < 22)) + 0.45 * peaks)[:, None]  # (T, 1)
    congested_cap = np.where(ratio < 0.5, 4 * ratio * (1 - ratio), 1.0)
    rng = np.random.default_rng(seed)
    flow = rng.poisson(_CAPACITY_PER_STEP * np.minimum(demand, congested_cap)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(speed > 0, flow * 12 / speed, 0.0)  # vehicles per mile
    occupancy = np.clip(density / _JAM_DENSITY_PER_MILE, 0.0, 1.0)
    data = np.stack([flow, occupancy, speed], axis=-1)  # (T, N, 3)
    data[~mask] = 0.0
    npz = work / "PEMS08.npz"
    np.savez_compressed(npz, data=data)

    # The release lists road links between neighbouring sensors: here each sensor's two
    # nearest others along the road, by index (the release's ids are 0 .. N-1).
    position = {sid: i for i, sid in enumerate(synth.sensor_ids)}
    links = synth.distances.assign(
        src=synth.distances["from"].map(position), dst=synth.distances["to"].map(position)
    )
    links = links[links["src"] != links["dst"]].sort_values(["src", "cost"])
    links = links.groupby("src", sort=True).head(2)
    table = pd.DataFrame({"from": links["src"], "to": links["dst"], "cost": links["cost"].round(1)})
    distances = work / "distance.csv"
    table.to_csv(distances, index=False)
    return npz, distances


def run_stage(name: str, argv: list[str], cwd: Path, log: Path) -> dict[str, float]:
    """Run one command as a child process; its wall time and its own peak RSS."""
    cmd = [sys.executable, "-m", "trafficcast", *argv]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    figures = {
        "wall_s": wall_s,
        # CPU seconds of the child (user + system): on a shared machine the wall time grows
        # with the others' load, this much less.
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss / 1024**2,
        "load_avg_1min": os.getloadavg()[0],
    }
    for metric, value in figures.items():
        emit(f"{name}_{metric}", value)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, help="the real PEMS08.npz (default: a stand-in)")
    parser.add_argument("--distances", type=Path, help="the real distance.csv")
    parser.add_argument("--model", choices=sorted(MODELS), default="paper")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args()
    if (args.npz is None) != (args.distances is None):
        parser.error("give both --npz and --distances, or neither (a stand-in is written)")

    repo = Path(__file__).resolve().parents[1]
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="trafficcast-pems08-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = {"model": args.model, "batch": args.batch, "threads": args.threads}
    print(json.dumps({"workdir": str(work), "allocator": allocator_for(), **common}), flush=True)
    stages: dict[str, dict[str, float]] = {}

    if args.npz is None:
        start = time.perf_counter()
        npz, distances = write_stand_in(work)
        emit("stand_in_s", time.perf_counter() - start)
    else:
        npz, distances = args.npz.resolve(), args.distances.resolve()
    imported = work / "imported"
    stages["import"] = run_stage(
        "import",
        ["import", "npz", "--npz", str(npz), "--channel", "flow", "--distances", str(distances),
         "--start", START, "--freq", "5min", "--output-dir", str(imported), "--no-progress"],
        repo, work / "import.log",
    )  # fmt: skip

    config = work / "pems08.yaml"
    config.write_text(
        "data:\n  quantity: flow\n  train_fraction: 0.6\n  test_fraction: 0.2\n"
        f"  batch_size: {args.batch}\n  val_batch_size: {args.batch}\n"
        f"  test_batch_size: {args.batch}\n"
        f"model:\n{MODELS[args.model]}  max_diffusion_step: 2\n  filter_type: dual_random_walk\n"
        f"train:\n  epochs: 1\n  threads: {args.threads}\n"
        "baselines:\n  fc_lstm: false\n  gru: false\n  tcn: false\n"
    )
    # The graph the import wrote: every listed link as a matrix where the importer writes one,
    # else the distances for DCRNN's kernel.
    adjacency = imported / "adjacency.npz"
    graph = (["--adjacency", str(adjacency)] if adjacency.exists()
             else ["--distances", str(imported / "distances.csv")])  # fmt: skip
    run = work / "run"
    stages["train"] = run_stage(
        "train",
        ["train", "--data", str(imported / "speeds.h5"), *graph, "--config", str(config),
         "--no-progress", "--output", str(run), "--overwrite"],
        repo, work / "train.log",
    )  # fmt: skip
    stages["evaluate"] = run_stage(
        "evaluate",
        ["evaluate", "--run", str(run), "--output", str(work / "eval" / "report.json")],
        repo, work / "evaluate.log",
    )  # fmt: skip

    report = json.loads((work / "eval" / "report.json").read_text())
    print(json.dumps({"dataset": report["dataset"], "split": report["split"], **common}))
    for name, by_key in report["metrics"].items():
        print(json.dumps({"model": name, **{k: v["mae"] for k, v in by_key.items()}}))
    epoch = [line for line in (work / "train.log").read_text().splitlines() if " epoch 1/1" in line]
    print("\n".join(epoch))
    print("\n| stage | wall time | CPU time | peak RSS | load average at the end |")
    print("| --- | --- | --- | --- | --- |")
    for name, f in stages.items():
        print(f"| {name} | {f['wall_s']:.1f} s | {f['cpu_s']:.1f} s | {f['peak_rss_gib']:.2f} GiB "
              f"| {f['load_avg_1min']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
