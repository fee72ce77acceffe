"""ASTGCN-style releases (PEMS03, PEMS04, PEMS07, PEMS08).

Each set is ``PEMS0x.npz`` with one array under the key ``data`` of shape
``(time, sensors, channels)``: PEMS04 and PEMS08 have three channels (flow, occupancy, speed),
PEMS03 and PEMS07 one (flow). Beside it, ``distance.csv`` (header ``from,to,cost``; PEMS03's
``PEMS03.csv`` has ``from,to,distance``) lists road links with a cost between sensors named by
their column number (0 .. N-1) or, for PEMS03, by the station ids that ``PEMS03.txt`` lists one
per line in column order. The cost's unit is not stated (PEMS07's run 0.03 to 20.5). The file
holds no timestamps: the caller gives the first one and the step.

The graph is the one the papers that publish results on these releases use: every listed link,
weight 1, direction as listed (ASTGCN's ``get_adjacency_matrix``), written as
``adjacency.npz``; the costs are kept as ``distances.csv`` for DCRNN's Gaussian kernel, which
on these files leaves many sensors without a neighbour (PEMS04: 67 of 307).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import numpy.typing as npt
import pandas as pd

from trafficcast.data.errors import DataInputError
from trafficcast.data.importers.common import (
    ImportResult,
    Readings,
    finish_import,
    finite_readings,
    listing,
)
from trafficcast.graph.io import read_distances, read_sensor_ids
from trafficcast.graph.links import link_adjacency

__all__ = ["CHANNEL_NAMES", "import_npz"]

# The channels of the ASTGCN releases, by how many there are.
CHANNEL_NAMES = {1: ("flow",), 3: ("flow", "occupancy", "speed")}
_KEY = "data"


def import_npz(
    npz: str | os.PathLike[str],
    *,
    channel: str,
    distances: str | os.PathLike[str],
    start: pd.Timestamp,
    freq_minutes: int,
    sensor_ids: str | os.PathLike[str] | None = None,
) -> ImportResult:
    """One channel of an ASTGCN ``.npz`` -> a table with timestamps from ``start``.

    Args:
        npz: the ``.npz`` (key ``data``, ``(T, N, C)``; a ``(T, N)`` array is one channel).
        channel: ``flow``, ``occupancy``, ``speed`` (as the release orders its channels) or
            a channel number.
        distances: ``distance.csv``; sensors named by column number, or by id with
            ``sensor_ids``.
        start: the first timestamp; freq_minutes: the step.
        sensor_ids: the ids in column order (``PEMS03.txt``); without it, sensors are named
            ``0`` .. ``N-1``.

    Non-finite and negative readings become missing; zeros are kept as readings (the summary
    counts them). The graph is every listed link with weight 1, direction as listed
    (:func:`graph.link_adjacency`); exact repeats are dropped and counted.

    Raises:
        DataInputError: no ``data`` array, an array that is not 2- or 3-dimensional, a channel
            the file does not have, ids that do not match the array, or a distance naming an
            unknown sensor.
        GraphInputError: ``distances`` unreadable, or a link listed twice with different costs.
    """
    src = os.fspath(npz)
    values, k, quantity, num_channels = _read_channel(src, channel)  # (T, N)
    num_steps, num_sensors = values.shape
    ids = _sensor_ids(sensor_ids, num_sensors, src)
    table = _checked_distances(distances, ids, by_id=sensor_ids is not None)
    adjacency, graph = link_adjacency(table, ids)

    usable, negative = finite_readings(values)
    zeros = int((usable & (values == 0)).sum())
    notes = [
        f"channel {k} ({quantity}) of {num_channels}; timestamps from {start} every "
        f"{freq_minutes} min (the file has none)"
    ]
    notes.append(
        f"distance.csv costs run {table['cost'].min():g} to {table['cost'].max():g} (unit not "
        "stated by the release); adjacency.npz: every listed link, weight 1, direction as listed"
    )
    if zeros:
        notes.append(
            f"{zeros} readings are 0 ({100.0 * zeros / values.size:.2f}%): kept as readings here; "
            "a config with missing: zero counts them as missing"
        )
    inputs = [src, os.fspath(distances)] + ([os.fspath(sensor_ids)] if sensor_ids else [])
    readings = Readings(
        quantity=quantity,
        index=pd.date_range(start, periods=num_steps, freq=f"{freq_minutes}min", unit="ns"),
        sensor_ids=ids,
        freq_minutes=freq_minutes,
        source=src,
        rows=np.arange(num_steps, dtype=np.int64),
        values=values,
        usable=usable,
        distances=table,
        adjacency=adjacency,
        graph=graph,
        inputs=inputs,
        read={
            "steps": num_steps,
            "sensors": num_sensors,
            "channels": num_channels,
            "distance rows": len(table),
        },
        dropped={
            f"readings not finite ({quantity})": int((~np.isfinite(values)).sum()),
            f"readings with a negative {quantity}": negative,
        },
        notes=notes,
    )
    return finish_import("npz", readings)


def _read_channel(src: str, channel: str) -> tuple[npt.NDArray[np.float64], int, str, int]:
    """The chosen channel as float64, its number, the quantity it holds and how many there are.

    Shapes:
        returns values (T, N).
    """
    array = _load_array(src)
    if array.ndim == 2:
        array = array[:, :, None]  # (T, N) -> (T, N, 1)
    if array.ndim != 3:
        raise DataInputError(
            f"{src}: '{_KEY}' has shape {array.shape}, expected (time, sensors, channels)"
        )
    num_steps, num_sensors, num_channels = array.shape
    if num_steps == 0 or num_sensors == 0:
        raise DataInputError(f"{src}: '{_KEY}' has shape {array.shape}: no readings")
    k, quantity = _channel(channel, num_channels, src)
    return array[:, :, k].astype(np.float64), k, quantity, num_channels


def _sensor_ids(sensor_ids: str | os.PathLike[str] | None, num_sensors: int, src: str) -> list[str]:
    """The ids in column order from ``sensor_ids``, or ``0 .. N-1`` without it."""
    if sensor_ids is None:
        return [str(i) for i in range(num_sensors)]
    ids = read_sensor_ids(sensor_ids)
    if len(ids) != num_sensors:
        raise DataInputError(
            f"{os.fspath(sensor_ids)}: {len(ids)} sensor ids, but {src} has {num_sensors} sensors"
        )
    return ids


def _checked_distances(
    distances: str | os.PathLike[str], ids: list[str], *, by_id: bool
) -> pd.DataFrame:
    """``distance.csv``, refused when a row names a sensor that is not one of ``ids``."""
    table = read_distances(distances)
    known = set(ids)
    unknown = [s for s in pd.unique(pd.concat([table["from"], table["to"]])) if s not in known]
    if unknown:
        how = "ids from --sensor-ids" if by_id else f"0 .. {len(ids) - 1}"
        raise DataInputError(
            f"{os.fspath(distances)}: sensor {listing(unknown)} is not one of the {len(ids)} "
            f"sensors ({how})"
        )
    return table


def _load_array(src: str) -> np.ndarray:
    if not os.path.exists(src):
        raise FileNotFoundError(2, "No such file or directory", src)
    try:
        with np.load(src, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataInputError(f"{src}: a single .npy array, expected an .npz archive")
            if _KEY not in archive.files:
                found = ", ".join(archive.files) or "nothing"
                raise DataInputError(f"{src}: no array '{_KEY}' (found: {found})")
            array = archive[_KEY]
    except DataInputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataInputError(f"{src}: not a readable .npz ({' '.join(str(exc).split())})") from exc
    if array.dtype.kind not in "biuf":
        raise DataInputError(f"{src}: '{_KEY}' holds {array.dtype}, expected numbers")
    return array


def _channel(channel: str, num_channels: int, src: str) -> tuple[int, str]:
    """The channel's number and the quantity it holds."""
    names = CHANNEL_NAMES.get(num_channels)
    text = str(channel).strip().lower()
    if text.isdigit():
        k = int(text)
        if k >= num_channels:
            raise DataInputError(
                f"{src}: no channel {k}: the file has {num_channels} (0 .. {num_channels - 1})"
            )
        if names is None:
            raise DataInputError(
                f"{src}: {num_channels} channels is not an ASTGCN layout (1: flow; 3: flow, "
                f"occupancy, speed), so what channel {k} holds is unknown"
            )
        return k, names[k]
    if names is None or text not in names:
        have = ", ".join(names) if names else "unnamed"
        raise DataInputError(
            f"{src}: no channel {channel!r}: the file has {num_channels} channel"
            f"{'s' if num_channels != 1 else ''} ({have})"
        )
    return names.index(text), text
