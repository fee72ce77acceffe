"""Reading sensor ids and distances, saving and loading adjacency files."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trafficcast.graph import (
    GraphInputError,
    atomic_write,
    load_adjacency,
    read_distances,
    read_sensor_ids,
    save_adjacency,
    write_distances,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- sensor ids -------------------------------------------------------------------------------


def test_sensor_ids_comma_separated_and_one_per_line(tmp_path: Path) -> None:
    comma = _write(tmp_path / "a.txt", "773869, 767541,007,400001.0,\n")
    lines = _write(tmp_path / "b.txt", "773869\n 767541 \r\n007\n\n400001.0\n")
    expected = ["773869", "767541", "007", "400001.0"]
    assert read_sensor_ids(comma) == expected
    assert read_sensor_ids(lines) == expected


def test_sensor_ids_metr_la_sample() -> None:
    ids = read_sensor_ids(SAMPLE / "graph_sensor_ids.txt")
    assert len(ids) == 207
    assert ids[:3] == ["773869", "767541", "767542"]


def test_sensor_ids_empty_or_duplicate(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.txt", " \n,\n")
    with pytest.raises(GraphInputError, match=r"empty\.txt: empty file"):
        read_sensor_ids(empty)
    dup = _write(tmp_path / "dup.txt", "1,2,3,2,1")
    with pytest.raises(GraphInputError, match=r"dup\.txt: duplicate sensor id '2'"):
        read_sensor_ids(dup)


# --- distances --------------------------------------------------------------------------------


def test_distances_with_and_without_header_keep_ids_as_strings(tmp_path: Path) -> None:
    body = "400001.0,007,0.0\n773869,767541,1234.5\n"
    for name, text in [("plain.csv", body), ("header.csv", "from,to,cost\n" + body)]:
        df = read_distances(_write(tmp_path / name, text))
        assert list(df.columns) == ["from", "to", "cost"]
        assert df["from"].tolist() == ["400001.0", "773869"]
        assert df["to"].tolist() == ["007", "767541"]
        assert df["cost"].dtype == np.float64
        assert df["cost"].tolist() == [0.0, 1234.5]


def test_distances_header_in_any_column_order_with_extras(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "cost,note,to,from\n12.5,x,b,a\n")
    df = read_distances(path)
    assert df.to_dict("list") == {"from": ["a"], "to": ["b"], "cost": [12.5]}


def test_distances_pems_bay_fixture() -> None:
    df = read_distances(REPO / "tests/graph/fixtures/pems-bay/distances_bay_2017.csv")
    assert len(df) == 8358
    assert df.iloc[3].tolist() == ["400030", "400045", 5108.4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"d\.csv: empty file"),
        ("\n\n", r"d\.csv: empty file"),
        ("a,b\nc,d\n", r"d\.csv: missing column 'cost'"),
        ("to,from,length\na,b,1\n", r"d\.csv: missing column 'cost' \(found: to, from, length;"),
        ("from,to,cost\n", r"d\.csv: header only"),
        ("a,b,1\nc,d,far\n", r"d\.csv: line 2: cost 'far' is not a finite number"),
        ("from,to,cost\na,b,1\nc,d,-3\n", r"d\.csv: line 3: cost '-3' is not a finite number"),
        ("a,b,1\n\nc,d,nan\n", r"d\.csv: line 3: cost 'nan'"),
        ("a,b,1\nc,d,\n", r"d\.csv: line 2: cost ''"),
        ("a,b,1\n,d,2\n", r"d\.csv: line 2: empty 'from' sensor id"),
        ("a,b,1,2\n", r"d\.csv: 4 columns without a header"),
    ],
)
def test_distances_errors_name_file_line_and_value(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "d.csv", text)
    with pytest.raises(GraphInputError, match=message) as info:
        read_distances(path)
    assert "\n" not in str(info.value)


def test_write_distances_round_trip(tmp_path: Path) -> None:
    df = pd.DataFrame({"from": ["007", "b"], "to": ["b", "007"], "cost": [0.1 + 0.2, 1e6 / 3]})
    path = tmp_path / "out.csv"
    write_distances(path, df)
    assert path.read_text().splitlines()[0] == "from,to,cost"
    back = read_distances(path)
    assert back["from"].tolist() == ["007", "b"]
    assert back["cost"].tolist() == [0.1 + 0.2, 1e6 / 3]  # exact: no precision lost
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temp file left


# --- adjacency files --------------------------------------------------------------------------


def test_save_and_load_adjacency_round_trip(tmp_path: Path) -> None:
    ids = ["773869", "007", "400001.0"]
    adj = np.array([[1, 0.5, 0], [0, 1, 0.25], [0.125, 0, 1]], dtype=np.float64)
    path = tmp_path / "adj.npz"
    save_adjacency(path, ids, adj)

    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["adj_mx", "sensor_ids"]
        assert npz["sensor_ids"].dtype.kind == "U"  # not object: loads without pickle
        assert npz["adj_mx"].dtype == np.float32
    loaded_ids, loaded = load_adjacency(path)
    assert loaded_ids == ids
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, adj.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["adj.npz"]


def test_save_adjacency_replaces_atomically_and_keeps_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "adj.npz"
    save_adjacency(path, ["a"], np.ones((1, 1)))
    before = path.read_bytes()
    with pytest.raises(GraphInputError, match=r"shape \(2, 2\), expected \(1, 1\)"):
        save_adjacency(path, ["a"], np.ones((2, 2)))
    assert path.read_bytes() == before
    save_adjacency(path, ["a", "b"], np.eye(2))
    assert load_adjacency(path)[0] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adj.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


def test_save_adjacency_needs_npz_and_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(GraphInputError, match=r"adj\.pkl: adjacency output must be a \.npz"):
        save_adjacency(tmp_path / "adj.pkl", ["a"], np.ones((1, 1)))
    with pytest.raises(GraphInputError, match="does not exist"):
        save_adjacency(tmp_path / "missing" / "adj.npz", ["a"], np.ones((1, 1)))


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Observe (not replace) os.fsync: each call's (inode, is a directory), in order."""
    calls: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_atomic_write_fsyncs_the_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.bin"
    calls = _record_fsyncs(monkeypatch)
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"
    # The renamed file keeps the temporary file's inode: the data is on disk before the rename,
    # and the directory entry after it.
    assert calls == [(path.stat().st_ino, False), (tmp_path.stat().st_ino, True)]


def test_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def write_half(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, write_half)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_into_a_missing_directory_names_it_and_creates_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "missing" / "out.bin"
    with pytest.raises(FileNotFoundError, match="directory .*missing does not exist") as info:
        atomic_write(target, lambda tmp: tmp.write_bytes(b"x"))
    assert info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_load_adjacency_metr_la_pickle_matches_sensor_ids() -> None:
    ids, adj = load_adjacency(SAMPLE / "adj_mx.pkl")
    assert ids == read_sensor_ids(SAMPLE / "graph_sensor_ids.txt")
    assert adj.shape == (207, 207)
    assert adj.dtype == np.float32
    assert int(np.count_nonzero(adj)) == 1722
    assert np.all(np.diag(adj) == 1.0)  # self-distance 0 -> weight 1
    assert adj.min() == 0.0 and adj.max() == 1.0


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"adj_mx": np.eye(2)}, r"missing key 'sensor_ids' \(found: adj_mx\)"),
        ({"sensor_ids": np.array(["a", "b"])}, "missing key 'adj_mx'"),
        ({"sensor_ids": np.array(["a", "b"]), "adj_mx": np.ones((2, 3))}, "square"),
        ({"sensor_ids": np.array(["a"]), "adj_mx": np.eye(2)}, "2x2 but there are 1 sensor ids"),
        ({"sensor_ids": np.array(["a", "a"]), "adj_mx": np.eye(2)}, "duplicate sensor id 'a'"),
        ({"sensor_ids": np.array(["a"]), "adj_mx": np.array([[np.nan]])}, "NaN"),
        (
            {"sensor_ids": np.array(["a"], dtype=object), "adj_mx": np.eye(1)},
            "not a readable .npz",
        ),
    ],
)
def test_load_adjacency_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(GraphInputError, match=message) as info:
        load_adjacency(path)
    assert str(info.value).startswith(str(path))


def test_load_adjacency_unknown_extension_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(GraphInputError, match=r"adj\.json: unknown adjacency format '\.json'"):
        load_adjacency(_write(tmp_path / "adj.json", "{}"))
    with pytest.raises(GraphInputError, match=r"junk\.npz: not a readable \.npz"):
        load_adjacency(_write(tmp_path / "junk.npz", "not a zip"))
    truncated = tmp_path / "trunc.npz"
    save_adjacency(truncated, ["a", "b"], np.eye(2))
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(GraphInputError, match=r"trunc\.npz: not a readable \.npz"):
        load_adjacency(truncated)
    assert not zipfile.is_zipfile(truncated)
