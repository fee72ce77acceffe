"""The restricted unpickler: DCRNN's adj_mx.pkl loads, code-running pickles are refused."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from trafficcast.graph import GraphInputError, load_dcrnn_adj_pkl, load_pickle_restricted

REPO = Path(__file__).resolve().parents[2]
ADJ_PKL = REPO / "data" / "sample" / "adj_mx.pkl"


class _RunsShell:
    """Pickles to ``os.system(command)``: loading it with plain pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def _dump(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_real_metr_la_pickle() -> None:
    ids, id_to_ind, adj = load_dcrnn_adj_pkl(ADJ_PKL)
    assert len(ids) == 207
    assert ids[:3] == ["773869", "767541", "767542"]
    assert all(isinstance(s, str) for s in ids)
    assert id_to_ind == {s: k for k, s in enumerate(ids)}
    assert adj.shape == (207, 207) and adj.dtype == np.float32
    assert int(np.count_nonzero(adj)) == 1722
    assert adj[0, 0] == 1.0


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_python3_pickles_of_every_protocol_load(tmp_path: Path, protocol: int) -> None:
    adj = np.array([[1.0, 0.5], [0.25, 1.0]], dtype=np.float32)
    path = _dump(tmp_path / "adj.pkl", [["a", "b"], {"a": 0, "b": 1}, adj], protocol)
    ids, id_to_ind, loaded = load_dcrnn_adj_pkl(path)
    assert ids == ["a", "b"] and id_to_ind == {"a": 0, "b": 1}
    np.testing.assert_array_equal(loaded, adj)


def test_bytes_ids_are_decoded(tmp_path: Path) -> None:
    path = _dump(tmp_path / "adj.pkl", [[b"773869"], {b"773869": 0}, np.eye(1)], 2)
    ids, id_to_ind, adj = load_dcrnn_adj_pkl(path)
    assert ids == ["773869"] and id_to_ind == {"773869": 0}
    assert adj.dtype == np.float32 and adj[0, 0] == 1.0


def test_plain_containers_and_numpy_scalars_are_admitted(tmp_path: Path) -> None:
    obj = {
        "od": OrderedDict(a=1),
        "set": {1, 2},
        "t": (1.5, 2j, b"x", bytearray(b"y")),
        "scalar": np.float32(2.5),
    }
    loaded = load_pickle_restricted(_dump(tmp_path / "x.pkl", obj, 2))
    assert loaded == obj
    assert isinstance(loaded["scalar"], np.float32)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _dump(tmp_path / "adj_mx.pkl", [["a"], {"a": 0}, _RunsShell(f"touch {marker}")], 2)
    with pytest.raises(GraphInputError) as info:
        load_dcrnn_adj_pkl(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load '")
    assert "system' from a pickle (only numpy arrays" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_other_callables_are_refused(tmp_path: Path, protocol: int) -> None:
    path = _dump(tmp_path / "x.pkl", _CallsEval(), protocol)
    with pytest.raises(GraphInputError, match=r"refused to load '(builtins|__builtin__)\.eval'"):
        load_pickle_restricted(path)


def test_numpy_functions_beyond_array_rebuilding_are_refused(tmp_path: Path) -> None:
    # GLOBAL numpy load; a harmless-looking module is not enough to get in.
    path = tmp_path / "x.pkl"
    path.write_bytes(b"cnumpy\nload\n(S'/etc/passwd'\ntR.")
    with pytest.raises(GraphInputError, match=r"refused to load 'numpy\.load'"):
        load_pickle_restricted(path)


def test_codecs_encode_only_serves_latin1(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(GraphInputError, match=r"x\.pkl: not a readable pickle"):
        load_pickle_restricted(path)


@pytest.mark.parametrize(
    "payload",
    [ADJ_PKL.read_bytes()[:5000], b"this is not a pickle", b""],
    ids=["truncated", "garbage", "empty"],
)
def test_broken_pickles_name_the_file(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "adj_mx.pkl"
    path.write_bytes(payload)
    with pytest.raises(GraphInputError, match=r"adj_mx\.pkl: not a readable pickle") as info:
        load_dcrnn_adj_pkl(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"adj": 1}, r"expected DCRNN's \[sensor_ids, sensor_id_to_ind, adj_mx\], got dict"),
        ([["a"], {"a": 0}], "got list of length 2"),
        ([["a", "a"], {"a": 0}, np.eye(2)], "duplicate sensor id 'a'"),
        ([["a", "b"], {"a": 1, "b": 0}, np.eye(2)], "disagrees with the order"),
        ([["a", "b"], {"a": 0, "b": 1}, np.eye(3)], "3x3 but there are 2 sensor ids"),
        ([["a", "b"], {"a": 0, "b": 1}, np.ones((2, 3))], "square"),
        ([["a"], {"a": 0}, [[1.0]]], "adj_mx is a list"),
        ([["a"], {"a": 0}, np.array([[np.inf]])], "NaN or infinite"),
        ([[1.5], {"a": 0}, np.eye(1)], "a sensor id is a float"),
    ],
)
def test_structure_is_validated(tmp_path: Path, obj: object, message: str) -> None:
    path = _dump(tmp_path / "adj.pkl", obj, 2)
    with pytest.raises(GraphInputError, match=message) as info:
        load_dcrnn_adj_pkl(path)
    assert str(info.value).startswith(str(path))
