"""Checkpoints: a round trip gives bit-identical forecasts; anything else is refused."""

from __future__ import annotations

import io
import os
import pickle
import stat
import threading

import numpy as np
import pytest
import torch

from trafficcast.graph import compute_supports
from trafficcast.graph.tensors import to_torch_sparse_csr
from trafficcast.models import DCRNN, FCLSTM, CheckpointError
from trafficcast.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from trafficcast.models.trainer import atomic_torch_save


def _dcrnn(k: int = 2) -> tuple[DCRNN, dict]:
    rng = np.random.default_rng(3)
    adj = rng.uniform(0.1, 1.0, (5, 5)) * (rng.random((5, 5)) < 0.6)
    np.fill_diagonal(adj, 0.0)
    supports = [to_torch_sparse_csr(s) for s in compute_supports(adj, "dual_random_walk")]
    kwargs = dict(
        num_nodes=5, input_dim=2, output_dim=1, hidden_dim=8, num_layers=2,
        max_diffusion_step=k, seq_len=4, horizon=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return DCRNN(supports=supports, **kwargs), kwargs


def _x() -> torch.Tensor:
    return torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("k", [2, 0])
def test_dcrnn_round_trip_is_bit_identical(tmp_path, k):
    model, kwargs = _dcrnn(k)
    model.eval()
    payload = {"model_name": "dcrnn", "model_kwargs": kwargs, "state_dict": model.state_dict()}
    save_checkpoint(tmp_path / "model.pt", payload)
    loaded = load_checkpoint(tmp_path / "model.pt")
    rebuilt = build_model(loaded)
    assert isinstance(rebuilt, DCRNN) and not rebuilt.training
    assert rebuilt.num_supports == (2 if k else 0)
    with torch.no_grad():
        expected, out = model(_x()), rebuilt(_x())
    assert torch.equal(out, expected)
    assert out.abs().sum() > 0
    # The supports travel inside the checkpoint (buffers), not from another file.
    for name, buffer in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], buffer), name


def test_fc_lstm_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    kwargs = dict(num_nodes=5, input_dim=2, output_dim=1, hidden_dim=16, num_layers=2, horizon=3)
    model = FCLSTM(**kwargs).eval()
    save_checkpoint(
        tmp_path / "fc.pt",
        {"model_name": "fc_lstm", "model_kwargs": kwargs, "state_dict": model.state_dict()},
    )
    rebuilt = build_model(load_checkpoint(tmp_path / "fc.pt"))
    with torch.no_grad():
        assert torch.equal(rebuilt(_x()), model(_x()))


def _saved(tmp_path) -> bytes:
    model, kwargs = _dcrnn()
    save_checkpoint(
        tmp_path / "model.pt",
        {"model_name": "dcrnn", "model_kwargs": kwargs, "state_dict": model.state_dict()},
    )
    return (tmp_path / "model.pt").read_bytes()


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a trafficcast checkpoint"):
        load_checkpoint(path)


def test_altered_checkpoint_is_refused(tmp_path):
    raw = bytearray(_saved(tmp_path))
    # Flip one byte inside the payload: the outer file still reads, the digest no longer matches.
    buffer = io.BytesIO(bytes(raw))
    payload = torch.load(buffer, weights_only=True)["payload"].numpy().tobytes()
    position = bytes(raw).find(payload[1000:1064])
    assert position > 0
    raw[position + 10] ^= 0xFF
    (tmp_path / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "model.pt")


def test_byte_flip_anywhere_in_the_middle_is_refused(tmp_path):
    raw = bytearray(_saved(tmp_path))
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "model.pt")


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    exploit = {"format": "trafficcast-checkpoint", "payload": _Exploit(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(exploit))
    else:
        torch.save(exploit, path)
    # Sanity: plain unpickling would indeed create the file.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Exploit(str(probe)))).close()
    assert probe.exists()
    with pytest.raises(CheckpointError, match="not a trafficcast checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_naming_an_unknown_model_is_refused(tmp_path):
    save_checkpoint(
        tmp_path / "m.pt", {"model_name": "transformer", "model_kwargs": {}, "state_dict": {}}
    )
    with pytest.raises(CheckpointError, match="names no known model"):
        load_checkpoint(tmp_path / "m.pt")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    model, kwargs = _dcrnn()
    kwargs = {**kwargs, "hidden_dim": 9}
    save_checkpoint(
        tmp_path / "m.pt",
        {"model_name": "dcrnn", "model_kwargs": kwargs, "state_dict": model.state_dict()},
    )
    with pytest.raises(CheckpointError, match="do not fit the dcrnn model"):
        build_model(load_checkpoint(tmp_path / "m.pt"))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    _saved(tmp_path)
    _saved(tmp_path)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_save_fsyncs_the_checkpoint_then_its_directory(tmp_path, monkeypatch):
    synced = []  # (inode, is a directory) of each fsync, observed; the real fsync still runs
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _saved(tmp_path)
    # Without the directory's fsync a power loss after the rename can lose the new checkpoint.
    assert synced == [
        ((tmp_path / "model.pt").stat().st_ino, False),
        (tmp_path.stat().st_ino, True),
    ]


def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temporary_files(tmp_path):
    before = _saved(tmp_path)
    model, kwargs = _dcrnn()
    payload = {"model_name": "dcrnn", "model_kwargs": kwargs, "state_dict": model.state_dict()}
    with pytest.raises(TypeError, match="cannot pickle"):  # inside torch.save, temp file made
        atomic_torch_save({**payload, "lock": threading.Lock()}, tmp_path / "model.pt")
    assert (tmp_path / "model.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    build_model(load_checkpoint(tmp_path / "model.pt"))  # still a whole checkpoint


def test_dcrnn_with_per_sensor_vectors_round_trips_bit_identical(tmp_path):
    model, kwargs = _dcrnn(2)
    kwargs = {**kwargs, "node_embedding_dim": 4}
    torch.manual_seed(0)
    model = DCRNN(supports=model.supports(), **kwargs).eval()
    payload = {"model_name": "dcrnn", "model_kwargs": kwargs, "state_dict": model.state_dict()}
    save_checkpoint(tmp_path / "model.pt", payload)
    rebuilt = build_model(load_checkpoint(tmp_path / "model.pt"))
    assert rebuilt.node_embedding_dim == 4
    assert torch.equal(rebuilt.node_embedding, model.node_embedding)
    with torch.no_grad():
        assert torch.equal(rebuilt(_x()), model(_x()))
