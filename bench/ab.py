"""A/B speed of two checkouts of trafficcast, interleaved, in CPU time at one thread.

Not a test. On a shared or noisy machine wall-clock figures from separate runs can't be compared;
this runs the two versions alternately (old, new, old, new, ...) in fresh processes, each at one
torch thread, and times CPU seconds, so the other core's load counts little::

    git worktree add /tmp/old 06449f3
    python bench/ab.py /tmp/old .            # 3 rounds, batch 32

Per process: the paper's DCRNN on the bundled graph (207 sensors, 64 units, 2 layers, K = 2,
dual random walk), one warm-up and ``--steps`` training steps at ``--batch``, then 30 forecasts
of one window. Prints one JSON line per process and one per checkout with the medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(checkout: Path, batch: int, steps: int) -> dict:
    sys.path.insert(0, str(checkout.resolve()))
    import torch

    from trafficcast.data import sample_adjacency_pkl_path
    from trafficcast.graph import compute_supports, load_adjacency
    from trafficcast.graph.tensors import to_torch_sparse_csr
    from trafficcast.models.dcrnn import DCRNN

    torch.set_num_threads(1)
    _, adj = load_adjacency(sample_adjacency_pkl_path())
    supports = [to_torch_sparse_csr(s) for s in compute_supports(adj, "dual_random_walk")]
    torch.manual_seed(0)
    model = DCRNN(207, 2, 1, supports, hidden_dim=64, num_layers=2, max_diffusion_step=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(batch, 12, 207, 2)
    y = torch.randn(batch, 12, 207, 1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (model(x, y, 0.5) - y).abs().mean().backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    model.eval()
    latency = []
    with torch.inference_mode():
        model(x[:1])
        for _ in range(30):
            start = time.process_time()
            model(x[:1])
            latency.append(time.process_time() - start)
    return {
        "checkout": str(checkout),
        "train_windows_per_cpu_s": round(batch / statistics.median(times), 2),
        "forecast_batch1_cpu_ms": round(1000 * statistics.median(latency), 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, help="OLD NEW (two checkouts)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.steps)), flush=True)
        return
    if len(args.checkouts) != 2:
        parser.error("give two checkouts: OLD NEW")
    results: dict[str, list[dict]] = {str(c): [] for c in args.checkouts}
    for _ in range(args.rounds):
        for checkout in args.checkouts:
            cmd = [sys.executable, __file__, "--one", str(checkout),
                   "--batch", str(args.batch), "--steps", str(args.steps)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"{checkout}: {proc.stderr.strip().splitlines()[-1]}")
            print(proc.stdout.strip(), flush=True)
            results[str(checkout)].append(json.loads(proc.stdout))
    for checkout, runs in results.items():
        medians = {
            key: statistics.median(run[key] for run in runs)
            for key in ("train_windows_per_cpu_s", "forecast_batch1_cpu_ms", "peak_rss_gb")
        }
        print(json.dumps({"checkout": checkout, "median_of": len(runs), **medians}), flush=True)


if __name__ == "__main__":
    main()
