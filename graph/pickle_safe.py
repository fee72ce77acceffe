"""Load DCRNN's ``adj_mx.pkl`` without letting the pickle run code.

A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable and its
``REDUCE`` opcode calls it, so ``pickle.load`` on an untrusted file can run ``os.system``. The
reference DCRNN code loads its graph with plain ``pickle.load``. Here every global the pickle asks
for goes through :meth:`RestrictedUnpickler.find_class`, which hands out only what numpy arrays
and plain containers need and refuses everything else before it is imported.
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from trafficcast.graph.errors import GraphInputError

__all__ = ["RestrictedUnpickler", "load_dcrnn_adj_pkl", "load_pickle_restricted"]


def _numpy_internal(name: str) -> Any:
    """Find a numpy pickle helper wherever this numpy version keeps it (``_core`` or ``core``)."""
    for module in ("numpy._core.multiarray", "numpy._core.numeric", "numpy.core.multiarray"):
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    raise ImportError(f"numpy has no pickle helper {name!r}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: Python 3 protocol-2 pickles store bytes this way.

    Only the latin-1 codec is served so that a pickle cannot pick an arbitrary codec by name.
    """
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused codec {encoding!r} in _codecs.encode")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The (module, name) pairs a graph pickle may reference, mapped to the objects served."""
    reconstruct = _numpy_internal("_reconstruct")
    scalar = _numpy_internal("scalar")
    frombuffer = _numpy_internal("_frombuffer")
    allowed: dict[tuple[str, str], Any] = {}
    # numpy moved ``core`` to ``_core`` in 2.0; pickles name whichever wrote them.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    builtin_types: tuple[type, ...] = (list, dict, set, frozenset, tuple, str, int, float, complex)
    builtin_types += (bool, bytes, bytearray)
    for module in ("builtins", "__builtin__"):  # ``__builtin__``: Python 2 pickles
        for obj in builtin_types:
            allowed[(module, obj.__name__)] = obj
    allowed[("__builtin__", "unicode")] = str
    allowed[("collections", "OrderedDict")] = OrderedDict
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that serves only numpy arrays, dtypes, scalars and builtin containers.

    ``source`` is the file name used in error messages.
    """

    def __init__(self, file: Any, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        obj: Callable[..., Any] | None = self._allowed.get((module, name))
        if obj is None:
            raise GraphInputError(
                f"{self.source}: refused to load '{module}.{name}' from a pickle (only numpy "
                "arrays, lists, dicts, strings and numbers are allowed)"
            )
        return obj


def load_pickle_restricted(path: str | os.PathLike[str]) -> object:
    """Unpickle ``path`` admitting only numpy arrays and plain containers.

    Loaded with ``encoding="latin1"`` because DCRNN's ``adj_mx.pkl`` is a Python 2 pickle (its
    ``str`` objects are bytes; latin-1 maps every byte, and numpy needs it for array buffers).

    Raises:
        GraphInputError: the pickle references anything else (e.g. ``posix.system``; it is
            refused before being imported or called), or is truncated or not a pickle.
    """
    source = os.fspath(path)
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle, source, encoding="latin1").load()
        except GraphInputError:
            raise
        except MemoryError as exc:
            raise GraphInputError(f"{source}: pickle asks for more memory than available") from exc
        except Exception as exc:
            # Truncated or corrupt streams fail with many types (EOFError, UnpicklingError,
            # ValueError, TypeError, struct.error...); all mean "not a usable pickle".
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise GraphInputError(
                f"{source}: not a readable pickle ({type(exc).__name__}: {reason})"
            ) from exc


def _as_str(value: object, source: str, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (str, int, np.integer)):
        return str(value)
    raise GraphInputError(f"{source}: {what} is a {type(value).__name__}, expected a string")


def load_dcrnn_adj_pkl(
    path: str | os.PathLike[str],
) -> tuple[list[str], dict[str, int], np.ndarray]:
    """Read DCRNN's ``adj_mx.pkl``: ``[sensor_ids, sensor_id_to_ind, adj_mx]``.

    Python 2 pickles may hold ids as bytes; they are decoded to ``str``.

    Shapes:
        adj_mx: ``(N, N)`` float32, ``N == len(sensor_ids)``; ``adj_mx[i, j]`` is the weight of
        the road from sensor i to sensor j.

    Raises:
        GraphInputError: unsafe or unreadable pickle, or a structure other than DCRNN's (not a
            3-item list, ids not strings, duplicate ids, an index map that disagrees with the id
            order, a non-square or non-finite matrix, a size that does not match the ids).
    """
    source = os.fspath(path)
    obj = load_pickle_restricted(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 3:
        raise GraphInputError(
            f"{source}: expected DCRNN's [sensor_ids, sensor_id_to_ind, adj_mx], "
            f"got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else "")
        )
    raw_ids, raw_map, adj = obj
    if not isinstance(raw_ids, (list, tuple, np.ndarray)):
        raise GraphInputError(
            f"{source}: sensor_ids is a {type(raw_ids).__name__}, expected a list"
        )
    sensor_ids = [_as_str(v, source, "a sensor id") for v in raw_ids]
    seen: set[str] = set()
    for sensor in sensor_ids:
        if sensor in seen:
            raise GraphInputError(f"{source}: duplicate sensor id '{sensor}'")
        seen.add(sensor)
    if not isinstance(raw_map, dict):
        raise GraphInputError(
            f"{source}: sensor_id_to_ind is a {type(raw_map).__name__}, expected a dict"
        )
    id_to_ind: dict[str, int] = {}
    for key, value in raw_map.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise GraphInputError(f"{source}: sensor_id_to_ind[{key!r}] is not an integer")
        id_to_ind[_as_str(key, source, "a sensor_id_to_ind key")] = int(value)
    expected = {sensor: i for i, sensor in enumerate(sensor_ids)}
    if id_to_ind != expected:
        bad = next(
            (s for s in sensor_ids if id_to_ind.get(s) != expected[s]),
            next(iter(set(id_to_ind) - set(expected)), "?"),
        )
        raise GraphInputError(
            f"{source}: sensor_id_to_ind disagrees with the order of sensor_ids (at '{bad}')"
        )
    if not isinstance(adj, np.ndarray):
        raise GraphInputError(f"{source}: adj_mx is a {type(adj).__name__}, expected a numpy array")
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise GraphInputError(f"{source}: adj_mx has shape {adj.shape}, expected a square matrix")
    if adj.shape[0] != len(sensor_ids):
        raise GraphInputError(
            f"{source}: adj_mx is {adj.shape[0]}x{adj.shape[1]} but there are "
            f"{len(sensor_ids)} sensor ids"
        )
    if adj.dtype.kind not in "biuf":
        raise GraphInputError(f"{source}: adj_mx has dtype {adj.dtype}, expected numbers")
    adj = np.ascontiguousarray(adj, dtype=np.float32)
    if not np.isfinite(adj).all():
        raise GraphInputError(f"{source}: adj_mx contains NaN or infinite weights")
    return sensor_ids, id_to_ind, adj
