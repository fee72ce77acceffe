"""DCRNN speed benchmark: one JSON line per figure, the machine's matmul peak measured in the same run.

Not a test. Examples::

    python bench/speed.py                      # the bundled week (207 sensors), paper's model
    python bench/speed.py --sensors 1000       # a synthetic graph of 1,000 sensors
    python bench/speed.py --threads 1 --steps 3
    python bench/speed.py --compile            # the same model under torch.compile
    python bench/speed.py --profile            # and where a training step's time goes

Figures (``{"metric": ..., "value": ..., ...}``):
``matmul_peak_gflops`` (fp32 2048^3; bf16 1024^3, to show whether this CPU has bf16 matmul
hardware), ``train_windows_per_s``, ``fraction_of_peak`` (the weight
matmuls' FLOPs of a training step / its time / the measured peak), ``forecast_ms_batch1`` (median of 100),
``forecast_s_batch64``, ``peak_rss_gb`` (this process, after the training steps); with
``--profile`` also ``time_share`` by kind of operation and ``dense_matmul_gflops`` for one
training step (see :func:`profile_step`). Each line
names the ``allocator``: the script restarts itself under tcmalloc as the trafficcast commands do
(``TRAFFICCAST_ALLOCATOR=system`` measures glibc's).
Timings on a shared machine are noisy: compare figures from one run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trafficcast.app.allocator import allocator_for, restart_with_preferred_allocator  # noqa: E402
from trafficcast.data import make_synthetic, sample_adjacency_pkl_path  # noqa: E402
from trafficcast.graph import (  # noqa: E402
    build_adjacency,
    compute_supports,
    load_adjacency,
)
from trafficcast.graph.tensors import to_torch_sparse_csr  # noqa: E402
from trafficcast.models.dcrnn import DCRNN  # noqa: E402


def load_graph(sensors: int) -> tuple[np.ndarray, int, str]:
    """The bundled METR-LA adjacency, or a synthetic road graph of ``sensors`` sensors."""
    if sensors <= 0:
        _, adj = load_adjacency(sample_adjacency_pkl_path())
        return adj, adj.shape[0], "metr-la-week"
    synthetic = make_synthetic(num_sensors=sensors, num_days=1, seed=0)
    adj = build_adjacency(synthetic.distances, synthetic.sensor_ids)
    return adj, sensors, "synthetic"


def emit(metric: str, value: float, **extra) -> None:
    print(json.dumps({"metric": metric, "value": round(float(value), 4), **extra}), flush=True)


def timings(fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` (warm it up first)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    return 2 * size**3 / min(timings(lambda: a @ b, repeats)) / 1e9


def weight_matmul_flops(model: DCRNN, batch: int) -> float:
    """FLOPs of the weight matmuls of one training step (forward + backward = 3 x forward).

    Counted from the shapes (FlopCounterMode counts a sparse support matmul as a dense one, which
    would inflate the figure): per DCGRU step ``2·N·B·M·(F·3H + H·2H + H·H)``, plus the output
    projection; 207 sensors, 64 units, 2 layers, K = 2 and the dual random walk give 1.85 GFLOP
    per window forward, 5.5 forward + backward, the figure the performance issue quotes.
    """
    n, h, m = model.num_nodes, model.hidden_dim, model.num_terms
    forward = 0.0
    for cells, steps in (
        (model.encoder_cells, model.seq_len),
        (model.decoder_cells, model.horizon),
    ):
        for cell in cells:
            per_step = 2 * n * batch * m * (cell.input_dim * 3 * h + h * 2 * h + h * h)
            forward += per_step * steps
    forward += 2 * n * batch * h * model.output_dim * model.horizon
    return 3 * forward


_ELEMENTWISE = {
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "sigmoid", "tanh",
    "lerp", "lerp_", "sigmoid_backward", "tanh_backward", "abs", "sgn", "mean", "sum", "fill_",
    "zero_", "neg", "sqrt", "addcmul_", "addcdiv_", "norm", "linalg_vector_norm", "clamp",
    "_foreach_add_", "_foreach_mul_", "_foreach_addcmul_", "_foreach_addcdiv_", "_foreach_sqrt",
    "_foreach_div_", "_foreach_lerp_", "_foreach_norm", "_foreach_mul", "_foreach_add",
    "_foreach_sqrt_", "_foreach_neg", "_foreach_maximum_",
}  # fmt: skip
_COPIES = {"cat", "copy_", "stack", "clone", "contiguous", "index_select", "index"}


def profile_step(step, model: DCRNN, flops: float, common: dict) -> None:
    """Profile one training step and print its self CPU time by kind of operation.

    ``time_share`` lines: ``dense_matmul`` (the weight matmuls), ``sparse_matmul`` (the graph
    walks: a matmul whose first operand is ``(S·N, N)``, ``(S·N, S·N)`` or ``(N, S·N)``),
    ``elementwise`` (activations, the GRU update, sums, the optimizer), ``copy`` (cat, copies),
    ``other`` (views, allocation, autograd and Python-side bookkeeping the profiler sees); and
    ``dense_matmul_gflops``: the counted FLOPs over the dense matmuls' time alone.
    """
    from torch.profiler import ProfilerActivity, profile

    n, s = model.num_nodes, model.num_supports
    graph_shapes = {(s * n, n), (s * n, s * n), (n, s * n), (n, n)}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    totals = {"dense_matmul": 0.0, "sparse_matmul": 0.0, "elementwise": 0.0, "copy": 0.0}
    other = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        name = event.key.removeprefix("aten::")
        micros = event.self_cpu_time_total
        if name in ("mm", "addmm", "addmm_"):
            mats = [tuple(x) for x in event.input_shapes if isinstance(x, list) and len(x) == 2]
            first = mats[0] if name == "mm" else (mats[1] if len(mats) > 1 else ())
            kind = "sparse_matmul" if first in graph_shapes else "dense_matmul"
        elif name in _ELEMENTWISE:
            kind = "elementwise"
        elif name in _COPIES:
            kind = "copy"
        else:
            other += micros
            continue
        totals[kind] += micros
    total = sum(totals.values()) + other
    for kind, micros in (*totals.items(), ("other", other)):
        emit("time_share", micros / total, category=kind, **common)
    emit("dense_matmul_gflops", flops / (totals["dense_matmul"] / 1e6) / 1e9, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sensors", type=int, default=0, help="synthetic graph size (0: the bundled week)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--compile", action="store_true", help="run the model under torch.compile (inductor)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one training step: where its time goes (time_share lines)",
    )
    args = parser.parse_args()
    # the allocator the trafficcast commands pick (app/allocator.py): tcmalloc where installed
    restart_with_preferred_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    common = {"threads": torch.get_num_threads(), "dtype": "fp32", "allocator": allocator_for()}

    peak = matmul_peak_gflops()
    emit("matmul_peak_gflops", peak, **common)
    bf16 = matmul_peak_gflops(size=1024, repeats=3, dtype=torch.bfloat16)
    emit("matmul_peak_gflops", bf16, **{**common, "dtype": "bf16"})
    if args.compile:
        common["compiled"] = True

    adj, num_nodes, label = load_graph(args.sensors)
    common["sensors"] = num_nodes
    common["data"] = label
    supports = [to_torch_sparse_csr(s) for s in compute_supports(adj, "dual_random_walk")]
    model = DCRNN(num_nodes, 2, 1, supports, hidden_dim=64, num_layers=2, max_diffusion_step=2)
    x = torch.randn(args.batch, 12, num_nodes, 2)
    y = torch.randn(args.batch, 12, num_nodes, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    run = torch.compile(model) if args.compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = run(x, y, 0.5)
        (out - y).abs().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # as the trainer (paper: 5)
        optimizer.step()

    start = time.perf_counter()
    step()  # warm-up (and compilation)
    if args.compile:
        emit("compile_s_train", time.perf_counter() - start, **common)
    step_s = statistics.median(timings(step, args.steps))
    emit("train_windows_per_s", args.batch / step_s, batch=args.batch, **common)
    flops = weight_matmul_flops(model, args.batch)
    emit(
        "fraction_of_peak",
        flops / step_s / 1e9 / peak,
        gflop_per_window=round(flops / args.batch / 1e9, 2),
        **common,
    )
    emit("peak_rss_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, **common)
    if args.profile:
        profile_step(step, model, flops, common)

    model.eval()
    with torch.inference_mode():
        one = x[:1]
        start = time.perf_counter()
        run(one)
        if args.compile:
            emit("compile_s_forecast", time.perf_counter() - start, **common)
        latency = statistics.median(timings(lambda: run(one), 100))
        emit("forecast_ms_batch1", 1000 * latency, **common)
        run(x)
        batch_s = statistics.median(timings(lambda: run(x), 3))
        emit("forecast_s_batch64", batch_s, batch=args.batch, **common)


if __name__ == "__main__":
    main()
