"""The reference PyTorch port of DCRNN, timed the way ``bench/speed.py`` times ours.

Not a test, and none of the port's code is in this repository: clone it yourself, then::

    git clone https://github.com/chnsh/DCRNN_PyTorch /tmp/dcrnn-port
    python bench/port.py --port /tmp/dcrnn-port --threads 2
    python bench/speed.py --threads 2                 # ours, for the ratio

The port's model (``model/pytorch/dcrnn_model.py``) is built with the paper's METR-LA settings
from its own config (64 units, 2 layers, K = 2, dual random walk, 12 in / 12 out, curriculum
learning with 2,000 decay steps) on the bundled week's graph, and trained as its supervisor does
(Adam lr 0.01 eps 1e-3 made after the first forward, where the port creates its weights; masked
MAE; gradient norm clipped at 5) on random inputs. Figures, one JSON line each with
``"impl": "reference-port"``: ``train_windows_per_s`` (median of ``--steps`` steps),
``forecast_ms_batch1`` (median of 30), ``forecast_s_batch64`` (median of 3), ``peak_rss_gb``.

The port's ``lib/utils.py`` imports TensorFlow for its TensorBoard helpers, which the model never
calls: when TensorFlow is not installed an empty stand-in module is registered so the import
succeeds. Its ``device`` is CUDA when torch sees a GPU: run on the same device as ours.
Like the trafficcast commands, the script restarts itself under tcmalloc when installed, so
both implementations are timed with the same allocator.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import logging
import resource
import statistics
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import timings  # noqa: E402  (bench/speed.py, beside this script)

from trafficcast.app.allocator import allocator_for, restart_with_preferred_allocator  # noqa: E402
from trafficcast.data import sample_adjacency_pkl_path  # noqa: E402
from trafficcast.graph import load_adjacency  # noqa: E402

# The port's METR-LA settings (its data/model/pretrained/METR-LA/config.yaml), i.e. the paper's.
MODEL_KWARGS = {
    "cl_decay_steps": 2000,
    "filter_type": "dual_random_walk",
    "horizon": 12,
    "input_dim": 2,
    "l1_decay": 0,
    "max_diffusion_step": 2,
    "num_nodes": 207,
    "num_rnn_layers": 2,
    "output_dim": 1,
    "rnn_units": 64,
    "seq_len": 12,
    "use_curriculum_learning": True,
}


def import_port(port: Path):
    """The port's ``DCRNNModel`` and ``masked_mae_loss`` from a checkout at ``port``."""
    if not (port / "model" / "pytorch" / "dcrnn_model.py").is_file():
        sys.exit(f"error: {port}: no model/pytorch/dcrnn_model.py (a DCRNN_PyTorch checkout?)")
    sys.dont_write_bytecode = True  # leave the checkout as it was
    sys.path.insert(0, str(port.resolve()))
    try:
        from model.pytorch.dcrnn_model import DCRNNModel
    except ModuleNotFoundError as exc:
        if exc.name != "tensorflow":
            raise
        # see the module docstring: an empty stand-in, with a spec so importlib can inspect it
        stub = types.ModuleType("tensorflow")
        stub.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
        sys.modules["tensorflow"] = stub
        for name in [m for m in sys.modules if m == "lib" or m.startswith(("lib.", "model."))]:
            del sys.modules[name]  # the half-imported modules, imported again below
        from model.pytorch.dcrnn_model import DCRNNModel
    from model.pytorch.loss import masked_mae_loss

    return DCRNNModel, masked_mae_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=Path, required=True, help="a DCRNN_PyTorch checkout")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    args = parser.parse_args()
    restart_with_preferred_allocator()
    model_cls, masked_mae_loss = import_port(args.port)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {
        "impl": "reference-port",
        "threads": torch.get_num_threads(),
        "dtype": "fp32",
        "allocator": allocator_for(),
        "sensors": MODEL_KWARGS["num_nodes"],
    }

    def emit(metric: str, value: float, **extra) -> None:
        row = {"metric": metric, "value": round(float(value), 4), **extra, **common}
        print(json.dumps(row), flush=True)

    torch.manual_seed(0)
    _, adj = load_adjacency(sample_adjacency_pkl_path())
    logger = logging.getLogger("dcrnn-port")
    logger.setLevel(logging.WARNING)
    model = model_cls(adj, logger, **MODEL_KWARGS).train()
    n = MODEL_KWARGS["num_nodes"]
    # the port's layout: (steps, batch, nodes * features)
    x = torch.randn(MODEL_KWARGS["seq_len"], args.batch, n * MODEL_KWARGS["input_dim"])
    y = torch.randn(MODEL_KWARGS["horizon"], args.batch, n * MODEL_KWARGS["output_dim"])
    state = {"batches_seen": 0, "optimizer": None}

    def step() -> None:
        if state["optimizer"] is not None:
            state["optimizer"].zero_grad()
        out = model(x, y, state["batches_seen"])
        if state["optimizer"] is None:  # the port's weights exist only after a forward
            state["optimizer"] = torch.optim.Adam(model.parameters(), lr=0.01, eps=1.0e-3)
        loss = masked_mae_loss(out, y)
        state["batches_seen"] += 1
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
        state["optimizer"].step()

    step()  # warm-up; creates the weights and the optimizer
    step_s = statistics.median(timings(step, args.steps))
    emit("train_windows_per_s", args.batch / step_s, batch=args.batch)

    model.eval()
    with torch.no_grad():
        one = x[:, :1]
        model(one)
        emit("forecast_ms_batch1", 1000 * statistics.median(timings(lambda: model(one), 30)))
        model(x)
        batch_s = statistics.median(timings(lambda: model(x), 3))
        emit("forecast_s_batch64", batch_s, batch=args.batch)
    emit("peak_rss_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)


if __name__ == "__main__":
    main()
