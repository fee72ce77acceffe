"""Reading and writing the graph files: sensor ids, road distances, adjacency matrices.

Sensor ids are strings everywhere: "773869" stays "773869" and "007" keeps its zeros, so every
CSV is read with ``dtype=str`` and numbers are parsed only where a number is meant (``cost``).
Writes are atomic (:func:`atomic_write`) so that a crash never leaves a half-written matrix where
a good one used to be. :func:`atomic_write` is the project's one implementation of the pattern:
``data``, the checkpoints and the app's run directories and registry write through it too.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trafficcast.graph.errors import GraphInputError
from trafficcast.graph.links import check_repeated_links
from trafficcast.graph.pickle_safe import load_dcrnn_adj_pkl

__all__ = [
    "atomic_write",
    "fsync_directory",
    "load_adjacency",
    "read_dense_matrix",
    "read_distances",
    "read_sensor_ids",
    "save_adjacency",
    "write_distances",
]

DISTANCE_COLUMNS = ("from", "to", "cost")
# The names the public releases give the cost column, in the order they are looked for: DCRNN
# and PEMS04/07/08 write ``cost``, PEMS03 (and LibCity's .rel) ``distance``.
COST_COLUMNS = ("cost", "distance", "weight")


def _first_duplicate(values: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def read_sensor_ids(path: str | os.PathLike[str]) -> list[str]:
    """Read sensor ids: comma-separated (DCRNN's ``graph_sensor_ids.txt``) or one per line.

    Whitespace around ids and empty items (a trailing comma or newline) are dropped.

    Raises:
        GraphInputError: the file holds no id, or an id appears twice (the first one is named).
    """
    source = os.fspath(path)
    with open(path, encoding="utf-8-sig") as handle:  # -sig: drop a BOM from spreadsheet exports
        text = handle.read()
    items = (item.strip() for item in text.replace("\r", "\n").replace("\n", ",").split(","))
    ids = [item for item in items if item]
    if not ids:
        raise GraphInputError(f"{source}: empty file, expected sensor ids")
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        raise GraphInputError(f"{source}: duplicate sensor id '{duplicate}'")
    return ids


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_distances(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read road links: CSV rows ``from,to,cost`` with or without a header.

    The header is detected by the first row's third field not being a number. With a header the
    columns are found by name (extra columns are ignored): ``from``, ``to`` and the cost under
    any of the names the public releases use (:data:`COST_COLUMNS`: ``cost`` as DCRNN and
    PEMS04/07/08, ``distance`` as PEMS03 and LibCity, ``weight``; the first of them present),
    or, when none of those is there, the third column of a header ``from,to,<anything>``.
    Without a header the file must have exactly three columns. ``cost`` is finite and ``>= 0``,
    in the file's own unit: metres in DCRNN's METR-LA and PEMS-BAY files, not stated by the
    PEMS0x releases (PEMS07's run 0.03 to 20.5).

    A link listed twice with the same cost is kept as two rows (the graph builders count and
    drop the repeat); with different costs it is refused.

    Returns:
        DataFrame with columns ``from`` (str), ``to`` (str), ``cost`` (float64), one row per line.

    Raises:
        GraphInputError: empty file, missing column, empty id, a cost that is not a finite
            non-negative number (the line number and value are named), or a link listed twice
            with different costs (both lines named).
    """
    source = os.fspath(path)
    try:
        raw = pd.read_csv(
            path,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,  # keep blank lines so that row index + 1 is the line number
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as exc:
        raise GraphInputError(f"{source}: empty file, expected rows from,to,cost") from exc
    except pd.errors.ParserError as exc:
        reason = " ".join(str(exc).split())
        raise GraphInputError(f"{source}: not a from,to,cost CSV ({reason})") from exc
    raw = raw.fillna("")  # short rows are padded with missing values
    raw = raw.apply(lambda column: column.str.strip())
    lines = pd.RangeIndex(1, len(raw) + 1)
    raw.index = lines
    raw = raw[(raw != "").any(axis=1)]  # blank lines
    if raw.empty:
        raise GraphInputError(f"{source}: empty file, expected rows from,to,cost")

    raw = _named_columns(raw, source)
    for column in ("from", "to"):
        empty = raw.index[raw[column] == ""]
        if len(empty):
            raise GraphInputError(f"{source}: line {empty[0]}: empty '{column}' sensor id")
    cost = pd.to_numeric(raw["cost"], errors="coerce").astype("float64")
    bad = ~np.isfinite(cost.to_numpy()) | (cost.to_numpy() < 0)
    if bad.any():
        line = raw.index[bad][0]
        value = raw.at[line, "cost"]
        raise GraphInputError(f"{source}: line {line}: cost {value!r} is not a finite number >= 0")
    frame: pd.DataFrame = pd.DataFrame(
        {
            "from": raw["from"].astype(str).to_numpy(),
            "to": raw["to"].astype(str).to_numpy(),
            "cost": cost.to_numpy(dtype=np.float64),
        }
    ).astype({"from": str, "to": str})
    check_repeated_links(frame, source, raw.index.to_list())
    return frame


def _named_columns(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """The ``from, to, cost`` columns of a distances table, by header name or by position."""
    first = raw.iloc[0].tolist()
    has_header = len(first) >= 3 and not _is_number(first[2])
    if has_header:
        names = [str(name).strip().lower() for name in first]
        found = ", ".join(name for name in names if name)
        for column in ("from", "to"):
            if column not in names:
                raise GraphInputError(f"{source}: missing column '{column}' (found: {found})")
        cost = _cost_column(names)
        if cost is None:
            raise GraphInputError(
                f"{source}: missing column 'cost' (found: {found}; the cost is read as "
                f"{', '.join(COST_COLUMNS)}, or as the third column of from,to,<cost>)"
            )
        raw = raw.iloc[1:]
        if raw.empty:
            raise GraphInputError(f"{source}: header only, no distance rows")
        raw = raw.iloc[:, [names.index("from"), names.index("to"), cost]]
        raw.columns = list(DISTANCE_COLUMNS)
    else:
        if raw.shape[1] < 3:
            missing = DISTANCE_COLUMNS[raw.shape[1] :]
            raise GraphInputError(
                f"{source}: missing column '{missing[0]}' (found {raw.shape[1]} columns, "
                "expected from,to,cost)"
            )
        if raw.shape[1] > 3:
            raise GraphInputError(
                f"{source}: {raw.shape[1]} columns without a header, expected from,to,cost"
            )
        raw.columns = list(DISTANCE_COLUMNS)
    return raw


def _cost_column(names: list[str]) -> int | None:
    """Where the cost is under a header: the first of :data:`COST_COLUMNS` present, else the
    third column of ``from,to,<anything>``, else None."""
    for name in COST_COLUMNS:
        if name in names:
            return names.index(name)
    if len(names) >= 3 and names[:2] == ["from", "to"] and names[2]:
        return 2
    return None


def read_dense_matrix(
    path: str | os.PathLike[str], what: str = "weights"
) -> tuple[list[str] | None, np.ndarray]:
    """Read a dense N×N matrix from a CSV (the T-GCN / STGCN layout): weights or distances.

    The layout is told by its shape: N rows of N numbers (no ids: the matrix is in the order of
    the data's sensors, or of a sensor-id file); N + 1 rows, the first a header of N sensor ids;
    or N + 1 rows of N + 1 cells, the first row and the first column both the ids (a pandas
    ``to_csv`` with its index). ``matrix[i, j]`` is from sensor i to sensor j.

    ``what`` is ``"weights"`` (every cell a finite number >= 0) or ``"distances"`` (numbers >= 0
    in metres; an empty cell, ``inf`` or ``nan`` means no road between the two sensors, read as
    ``+inf``).

    Shapes:
        returns ids (N) or None, and the matrix ``(N, N)`` float64.

    Raises:
        GraphInputError: an empty file, a shape that is none of the above, ids that repeat or
            disagree between the header and the first column, or a bad cell (line and column
            named).
    """
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(2, "No such file or directory", source)
    try:
        raw = pd.read_csv(
            path, header=None, dtype=str, keep_default_na=False, na_filter=False,
            encoding="utf-8-sig",
        )  # fmt: skip
    except pd.errors.EmptyDataError as exc:
        raise GraphInputError(f"{source}: empty file, expected an N x N matrix") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise GraphInputError(f"{source}: not a matrix CSV ({reason})") from exc
    cells = raw.fillna("").apply(lambda column: column.str.strip())
    rows, cols = cells.shape
    first_line = 1
    ids: list[str] | None = None
    if rows == cols + 1:
        ids, cells, first_line = cells.iloc[0].tolist(), cells.iloc[1:], 2
    elif rows == cols and rows > 1 and not _is_number(cells.iat[0, 0]):
        # The top-left cell of a plain matrix is a number; above an index column it is a label.
        ids = cells.iloc[0, 1:].tolist()
        index = cells.iloc[1:, 0].tolist()
        if index != ids:
            raise GraphInputError(
                f"{source}: the first column's sensor ids are not the header's, in its order"
            )
        cells, first_line = cells.iloc[1:, 1:], 2
    elif rows != cols:
        raise GraphInputError(
            f"{source}: not a square matrix ({rows} rows of {cols} columns); expected N rows of "
            "N numbers, optionally under a header row of N sensor ids"
        )
    if ids is not None:
        if "" in ids:
            raise GraphInputError(f"{source}: empty sensor id in the header")
        duplicate = _first_duplicate(ids)
        if duplicate is not None:
            raise GraphInputError(f"{source}: duplicate sensor id '{duplicate}'")
    matrix = _matrix_values(cells, source, first_line, what)
    return ids, matrix


def _matrix_values(cells: pd.DataFrame, source: str, first_line: int, what: str) -> np.ndarray:
    """The cells as float64; the first bad one is named by line and column.

    Shapes: ``cells (N, N)`` of str -> ``(N, N)`` float64.
    """
    text = cells.to_numpy(dtype=str)
    empty = text == ""
    values = pd.to_numeric(pd.Series(np.where(empty, "nan", text).ravel()), errors="coerce")
    matrix = values.to_numpy(dtype=np.float64).reshape(text.shape)
    no_road = empty | np.isin(np.char.lower(text), ["nan", "inf", "+inf", "infinity"])
    if what == "distances":
        bad = (np.isnan(matrix) & ~no_road) | (matrix < 0)
        matrix = np.where(no_road, np.inf, matrix)
        rule = "a distance >= 0 in metres, or empty/inf for no road"
    else:
        bad = ~np.isfinite(matrix) | (matrix < 0)
        rule = "a finite weight >= 0"
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise GraphInputError(
            f"{source}: line {row + first_line}, column {col + 1}: {str(text[row, col])!r} is not "
            f"{rule}"
        )
    return matrix


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Replace ``path`` by what ``write(tmp)`` puts in a temporary file, atomically and durably.

    The temporary file lies beside ``path`` (same directory, so the rename cannot cross
    filesystems); once ``write`` returns it is fsync'd, renamed onto ``path`` with
    ``os.replace`` and the directory fsync'd, so that after a crash or power loss ``path`` holds
    the old content or the new one, never a mix or nothing. If anything fails before the rename,
    the temporary file is removed and ``path`` is untouched. The new file gets the permissions a
    plain ``open()`` would give (``0o666 & ~umask``), not ``mkstemp``'s 0600.

    ``write`` gets the temporary file's path, not an open handle, because some writers take
    only a path (pandas' HDF writer).

    Raises:
        FileNotFoundError: the directory of ``path`` does not exist (nothing is created).
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"directory {directory} does not exist", os.fspath(path)
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        try:
            # mkstemp creates 0600; give the result the mode a plain open() would (0666 - umask).
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        finally:
            os.close(fd)
        write(tmp)
        # fsync through a new descriptor: ``write`` may have written through its own, and the
        # kernel flushes the file's data whichever descriptor asks.
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync ``directory`` so that a rename or a new entry in it survives a power loss.

    Best effort: a platform or filesystem that cannot open or fsync a directory is skipped.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _require_output_directory(path: str | os.PathLike[str]) -> None:
    """A graph command's output in a missing directory is a user error naming both."""
    directory = Path(path).parent
    if not directory.is_dir():
        raise GraphInputError(f"{os.fspath(path)}: directory {directory} does not exist")


def write_distances(path: str | os.PathLike[str], distances: pd.DataFrame) -> None:
    """Write ``from,to,cost`` rows with a header, atomically (the format :func:`read_distances`
    reads back)."""
    frame = distances.loc[:, list(DISTANCE_COLUMNS)]
    _require_output_directory(path)
    # repr-precision floats: a round trip through the file changes no distance.
    atomic_write(
        path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n", float_format=None)
    )


def save_adjacency(
    path: str | os.PathLike[str], sensor_ids: Sequence[str], adj_mx: np.ndarray
) -> None:
    """Write an adjacency ``.npz`` (no pickles inside), atomically.

    Keys: ``sensor_ids`` as a numpy unicode array (``<U..``, not object, so that it loads with
    ``allow_pickle=False``) and ``adj_mx`` as float32.

    Shapes:
        adj_mx: ``(N, N)`` with ``N == len(sensor_ids)``.

    Raises:
        GraphInputError: the name does not end in ``.npz``, the matrix is not N×N for the N ids,
            or ids repeat.
    """
    target = os.fspath(path)
    if not target.lower().endswith(".npz"):
        raise GraphInputError(f"{target}: adjacency output must be a .npz file")
    ids = [str(s) for s in sensor_ids]
    adj = np.asarray(adj_mx, dtype=np.float32)
    if adj.ndim != 2 or adj.shape != (len(ids), len(ids)):
        raise GraphInputError(
            f"{target}: adj_mx has shape {adj.shape}, expected ({len(ids)}, {len(ids)}) for "
            f"{len(ids)} sensor ids"
        )
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        raise GraphInputError(f"{target}: duplicate sensor id '{duplicate}'")
    buffer = io.BytesIO()
    # np.str_ array: '<U..' dtype, never object; an empty list still gets a unicode dtype.
    np.savez(buffer, sensor_ids=np.array(ids, dtype=np.str_), adj_mx=adj)
    _require_output_directory(target)
    atomic_write(target, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _load_npz(source: str) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(source, allow_pickle=False) as npz:
            missing = [key for key in ("sensor_ids", "adj_mx") if key not in npz.files]
            if missing:
                found = ", ".join(npz.files) or "nothing"
                raise GraphInputError(f"{source}: missing key '{missing[0]}' (found: {found})")
            ids_array = npz["sensor_ids"]
            adj = npz["adj_mx"]
    except GraphInputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GraphInputError(f"{source}: not a readable .npz adjacency ({reason})") from exc
    if ids_array.ndim != 1 or ids_array.dtype.kind not in "UiuS":
        raise GraphInputError(
            f"{source}: sensor_ids must be a 1-D string array, got {ids_array.dtype} "
            f"of shape {ids_array.shape}"
        )
    if ids_array.dtype.kind == "S":
        ids = [v.decode("utf-8", errors="replace") for v in ids_array.tolist()]
    else:
        ids = [str(v) for v in ids_array.tolist()]
    if adj.dtype.kind not in "biuf":
        raise GraphInputError(f"{source}: adj_mx has dtype {adj.dtype}, expected numbers")
    return ids, adj


def load_adjacency(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Load an adjacency: a ``.npz`` from :func:`save_adjacency` or DCRNN's ``adj_mx.pkl``.

    The pickle goes through :func:`trafficcast.graph.pickle_safe.load_dcrnn_adj_pkl` (restricted unpickler);
    the ``.npz`` is loaded with ``allow_pickle=False``.

    Shapes:
        returns ids (N) and ``adj_mx`` ``(N, N)`` float32.

    Raises:
        GraphInputError: unknown extension, missing keys, non-square matrix, a matrix size that
            does not match the ids, duplicate ids, non-finite weights, or an unsafe pickle.
    """
    source = os.fspath(path)
    suffix = Path(source).suffix.lower()
    if suffix in (".pkl", ".pickle"):
        ids, _, adj = load_dcrnn_adj_pkl(source)
        return ids, adj
    if suffix != ".npz":
        raise GraphInputError(
            f"{source}: unknown adjacency format '{suffix or '(no extension)'}' "
            "(expected .npz from 'trafficcast graph' or DCRNN's .pkl)"
        )
    if not os.path.exists(source):
        raise FileNotFoundError(2, "No such file or directory", source)
    ids, adj = _load_npz(source)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise GraphInputError(f"{source}: adj_mx has shape {adj.shape}, expected a square matrix")
    if adj.shape[0] != len(ids):
        raise GraphInputError(
            f"{source}: adj_mx is {adj.shape[0]}x{adj.shape[1]} but there are {len(ids)} sensor ids"
        )
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        raise GraphInputError(f"{source}: duplicate sensor id '{duplicate}'")
    adj = np.ascontiguousarray(adj, dtype=np.float32)
    if not np.isfinite(adj).all():
        raise GraphInputError(f"{source}: adj_mx contains NaN or infinite weights")
    return ids, adj
