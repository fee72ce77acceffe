"""The bundled METR-LA week (data/sample/) and a reader for sensor location files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd

from trafficcast.data.errors import DataInputError

__all__ = [
    "SAMPLE_DIR",
    "read_sensor_locations",
    "sample_adjacency_pkl_path",
    "sample_locations_path",
    "sample_sensor_ids_path",
    "sample_speeds_path",
]

# Beside this module so that it also resolves in an installed package (package-data).
SAMPLE_DIR = Path(__file__).parent / "sample"


def sample_speeds_path() -> Path:
    """``metr-la-week.h5``: 2,016 five-minute steps x 207 sensors, pandas HDF key ``df``."""
    return SAMPLE_DIR / "metr-la-week.h5"


def sample_sensor_ids_path() -> Path:
    """``graph_sensor_ids.txt``: the 207 ids, comma-separated, in column order."""
    return SAMPLE_DIR / "graph_sensor_ids.txt"


def sample_locations_path() -> Path:
    """``graph_sensor_locations.csv``: ``index,sensor_id,latitude,longitude``."""
    return SAMPLE_DIR / "graph_sensor_locations.csv"


def sample_adjacency_pkl_path() -> Path:
    """``adj_mx.pkl``: DCRNN's METR-LA adjacency (a pickle: load it only through a safe loader)."""
    return SAMPLE_DIR / "adj_mx.pkl"


def read_sensor_locations(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Sensor coordinates as a DataFrame ``sensor_id`` (str), ``latitude``, ``longitude``.

    Accepts METR-LA's ``index,sensor_id,latitude,longitude`` with a header row and PEMS-BAY's
    headerless ``sensor_id,latitude,longitude``; rows keep the file's order.

    Shapes:
        returns (N, 3).
    """
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), src)
    with open(path, encoding="utf-8-sig") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataInputError(f"{src}: empty file")
    fields = [f.strip().lower() for f in first.split(",")]
    has_header = "sensor_id" in fields or "latitude" in fields
    try:
        raw = pd.read_csv(
            path,
            header=0 if has_header else None,
            dtype=str,
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataInputError(f"{src}: cannot parse CSV ({' '.join(str(exc).split())})") from exc
    if has_header:
        raw.columns = [str(c).strip().lower() for c in raw.columns]
        missing = [c for c in ("sensor_id", "latitude", "longitude") if c not in raw.columns]
        if missing:
            raise DataInputError(
                f"{src}: missing column {', '.join(repr(c) for c in missing)} "
                f"(found: {', '.join(raw.columns)})"
            )
        table = raw[["sensor_id", "latitude", "longitude"]]
    elif raw.shape[1] == 3:
        table = raw.set_axis(["sensor_id", "latitude", "longitude"], axis=1)
    elif raw.shape[1] == 4:  # METR-LA's layout without its header row
        table = raw.iloc[:, 1:].set_axis(["sensor_id", "latitude", "longitude"], axis=1)
    else:
        raise DataInputError(
            f"{src}: expected columns sensor_id,latitude,longitude (found {raw.shape[1]} "
            "columns and no header)"
        )
    if len(table) == 0:
        raise DataInputError(f"{src}: no rows")

    ids = table["sensor_id"].fillna("").str.strip()
    if (ids == "").any():
        row = int(np.argmax((ids == "").to_numpy()))
        raise DataInputError(f"{src}: empty sensor_id in data row {row + 1}")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataInputError(f"{src}: duplicate sensor_id {', '.join(pd.unique(dup)[:5])}")
    out: pd.DataFrame = pd.DataFrame({"sensor_id": ids.astype(str).to_numpy()})
    for column, bound in (("latitude", 90.0), ("longitude", 180.0)):
        text = table[column]
        numbers = pd.to_numeric(text, errors="coerce")
        bad = (numbers.isna() | ~np.isfinite(numbers) | (numbers.abs() > bound)).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataInputError(
                f"{src}: invalid {column} {text.iloc[row]!r} for sensor {ids.iloc[row]}"
            )
        out[column] = numbers.to_numpy(dtype=np.float64)
    out["sensor_id"] = out["sensor_id"].astype(str)
    return out
