"""Checkpoints: one self-describing file that rebuilds a trained model on its own.

The file holds the configuration, the weights (the graph supports among them, as buffers), the
scaler, the sensor ids, the time features used, the frequency, the metrics, when it was trained
and the library versions. It is written with ``torch.save`` and read only with
``torch.load(weights_only=True)``, which refuses to run code: a file made to execute something
on load is rejected, and nothing runs.

Integrity: the payload is serialised once, its SHA-256 stored beside it, and the digest checked on
load, so a truncated or altered file is refused instead of giving wrong forecasts.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trafficcast.models.dcrnn import DCRNN
from trafficcast.models.errors import CheckpointError
from trafficcast.models.fc_lstm import FCLSTM
from trafficcast.models.names import DCRNN_NAME, FC_LSTM_NAME, GRU_NAME, TCN_NAME
from trafficcast.models.tcn import TCN
from trafficcast.models.train_state import atomic_torch_save

FORMAT = "trafficcast-checkpoint"
FORMAT_VERSION = 1

# The GRU is DCRNN without the graph (max_diffusion_step 0, no supports).
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    DCRNN_NAME: DCRNN,
    GRU_NAME: DCRNN,
    FC_LSTM_NAME: FCLSTM,
    TCN_NAME: TCN,
}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (must hold ``model_name``, ``model_kwargs`` and ``state_dict``) atomically."""
    for key in ("model_name", "model_kwargs", "state_dict"):
        if key not in payload:
            raise ValueError(f"checkpoint payload lacks {key!r}")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    raw = buffer.getvalue()
    outer = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "payload": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }
    atomic_torch_save(outer, Path(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a trafficcast checkpoint ({reason[:200]})") from exc
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trafficcast checkpoint (no '{FORMAT}' header)")
    if outer.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {outer.get('format_version')!r} is not supported "
            f"(this trafficcast reads version {FORMAT_VERSION})"
        )
    payload_tensor = outer.get("payload")
    if not isinstance(payload_tensor, torch.Tensor) or payload_tensor.dtype != torch.uint8:
        raise CheckpointError(f"{path}: checkpoint payload missing or malformed")
    raw = payload_tensor.numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != outer.get("sha256"):
        raise CheckpointError(
            f"{path}: checksum mismatch: the checkpoint was altered or is corrupt"
        )
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint payload cannot be read ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("model_name") not in MODEL_CLASSES:
        raise CheckpointError(f"{path}: checkpoint names no known model")
    return payload


def build_model(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the model of a checkpoint payload, weights loaded, in eval mode."""
    name = payload["model_name"]
    kwargs = dict(payload["model_kwargs"])
    state = payload["state_dict"]
    if MODEL_CLASSES[name] is DCRNN:
        supports = []
        i = 0
        n = kwargs["num_nodes"]
        while f"support{i}_crow" in state:
            supports.append(
                torch.sparse_csr_tensor(
                    state[f"support{i}_crow"],
                    state[f"support{i}_col"],
                    state[f"support{i}_val"],
                    size=(n, n),
                    check_invariants=True,  # a malformed file must not reach the sparse kernels
                )
            )
            i += 1
        kwargs["supports"] = supports
    try:
        model = MODEL_CLASSES[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint describes an invalid {name} model: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not fit the {name} model: {str(exc)[:200]}"
        ) from exc
    model.eval()
    return model
