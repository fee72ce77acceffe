"""Training on a large synthetic graph: one epoch, its time and the process's peak RSS.

Not a test. Runs the real command (``trafficcast train``) in a child process on synthetic data
(:func:`data.make_synthetic`: a road network whose congestion travels along the roads), so the
figures include the data pipeline, the windows made on the fly, validation and the checkpoint:

    python bench/large_graph.py --sensors 1000
    python bench/large_graph.py --sensors 8600 --days 1 --batch 8   # LargeST's California size

Prints one JSON line per figure: ``epoch_s`` (the epoch's wall time as the trainer logs it:
training plus the validation pass), ``train_windows_per_s`` (training windows / ``epoch_s``, so
a slight underestimate), ``peak_rss_gb`` (of the training process, evaluation included) and
``run_s`` (the whole command: data reading, graph, training, evaluation, checkpoint).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trafficcast.app.allocator import allocator_for  # noqa: E402
from trafficcast.data import make_synthetic, write_synthetic  # noqa: E402


def emit(metric: str, value: float, **extra) -> None:
    print(json.dumps({"metric": metric, "value": round(float(value), 4), **extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1, help="days of synthetic data")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="trafficcast-large-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = write_synthetic(make_synthetic(num_sensors=args.sensors, num_days=args.days), work)
    emit("generate_s", time.perf_counter() - start, sensors=args.sensors)
    config = work / "config.yaml"
    config.write_text(
        f"data:\n  batch_size: {args.batch}\n  val_batch_size: {args.batch}\n"
        f"  test_batch_size: {args.batch}\n"
        "model:\n  rnn_units: 64\n  num_rnn_layers: 2\n  max_diffusion_step: 2\n"
        "  filter_type: dual_random_walk\n"
        f"train:\n  epochs: 1\n  threads: {args.threads}\n"
        "baselines:\n  fc_lstm: false\n"
    )
    cmd = [sys.executable, "-m", "trafficcast", "train", "--data", str(paths[0]),
           "--distances", str(paths[1]), "--config", str(config), "--no-progress",
           "--output", str(work / "run"), "--overwrite"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    run_s = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    common = {
        "sensors": args.sensors,
        "batch": args.batch,
        "threads": args.threads,
        "allocator": allocator_for(),  # what `trafficcast train` restarted under
    }
    epoch = re.search(r"dcrnn epoch 1/1: .*?, ([0-9.]+) s", proc.stderr)
    windows = re.search(r"windows train/val/test (\d+)/", proc.stderr)
    if epoch:
        emit("epoch_s", float(epoch.group(1)), **common)
        if windows:
            emit("train_windows_per_s", int(windows.group(1)) / float(epoch.group(1)), **common)
    emit("peak_rss_gb", rss_gb, **common)
    emit("run_s", run_s, **common)


if __name__ == "__main__":
    main()
