"""``trafficcast import npz`` with the real graph files of the PEMS0x releases
(``tests/graph/fixtures/pems0x``) and stand-in arrays of their documented shapes: the graph
the literature uses (every listed link) as ``adjacency.npz``, the costs kept as
``distances.csv``, and the account in ``import.json`` and on the screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.test_import_common import user_error
from trafficcast.app.cli import main
from trafficcast.graph import load_adjacency, read_distances

PEMS = Path(__file__).resolve().parents[1] / "graph" / "fixtures" / "pems0x"
START = ["--start", "2018-01-01T00:00", "--freq", "5min"]


def _stand_in(path: Path, steps: int, sensors: int, channels: int) -> Path:
    """A ``.npz`` with ``data`` of shape ``(steps, sensors, channels)``: random float32 flows."""
    rng = np.random.default_rng(0)
    np.savez(path, data=rng.uniform(0.0, 500.0, (steps, sensors, channels)).astype(np.float32))
    return path


def _import(tmp_path: Path, npz: Path, links: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "out"
    argv = ["import", "npz", "--npz", str(npz), "--distances", str(links), "--channel", "flow"]
    assert main([*argv, *extra, *START, "--no-progress", "--output-dir", str(out)]) == 0
    return json.loads((out / "import.json").read_text()), str(out)


def _check_pems04(summary: dict, out: str, printed: str) -> None:
    ids, adj = load_adjacency(Path(out) / "adjacency.npz")
    assert ids == [str(k) for k in range(307)]
    assert float(adj.sum()) == 340.0 and adj[73, 5] == 1.0 and adj[5, 73] == 0.0
    connected = (adj != 0).any(axis=0) | (adj != 0).any(axis=1)
    assert connected.all()
    assert len(read_distances(Path(out) / "distances.csv")) == 340
    assert summary["graph"] == {
        "files": ["adjacency.npz", "distances.csv"],
        "links_listed": 340,
        "links_kept": 340,
        "duplicates": 0,
        "isolated": 0,
        "self_loops": 0,
        "directed": True,
    }
    assert (
        "graph: links: 340 listed, 0 repeated (dropped), 340 kept (directed); isolated sensors: "
        "0 of 307\n"
    ) in printed
    # The costs' unit is not stated by the release, so none is claimed.
    assert "distance.csv costs run 3.2 to 2712.1 (unit not stated by the release)" in printed


def test_pems04_real_links_every_one_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    npz = _stand_in(tmp_path / "PEMS04.npz", 288, 307, 3)
    summary, out = _import(tmp_path, npz, PEMS / "PEMS04" / "distance.csv")
    _check_pems04(summary, out, capsys.readouterr().out)


@pytest.mark.slow
def test_pems04_documented_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The acceptance run: PEMS04's documented shape, 16,992 steps x 307 sensors x 3 (62 MB)."""
    npz = _stand_in(tmp_path / "PEMS04.npz", 16_992, 307, 3)
    summary, out = _import(tmp_path, npz, PEMS / "PEMS04" / "distance.csv")
    assert (summary["steps"], summary["sensors"]) == (16_992, 307)
    assert summary["end"] == "2018-02-28T23:55:00"
    _check_pems04(summary, out, capsys.readouterr().out)


def test_pems03_header_from_to_distance_and_station_ids(tmp_path: Path, capsys):
    npz = _stand_in(tmp_path / "PEMS03.npz", 48, 358, 1)
    extra = ("--sensor-ids", str(PEMS / "PEMS03" / "PEMS03.txt"))
    summary, out = _import(tmp_path, npz, PEMS / "PEMS03" / "PEMS03.csv", *extra)
    assert summary["graph"]["links_listed"] == 546
    assert summary["graph"]["self_loops"] == 1
    assert (summary["graph"]["links_kept"], summary["graph"]["isolated"]) == (546, 0)
    ids, adj = load_adjacency(Path(out) / "adjacency.npz")
    assert adj[ids.index("317842"), ids.index("318711")] == 1.0
    assert "costs run 0 to 10.194 (unit not stated" in capsys.readouterr().out


def test_pems08_repeats_dropped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    npz = _stand_in(tmp_path / "PEMS08.npz", 48, 170, 3)
    summary, out = _import(tmp_path, npz, PEMS / "PEMS08" / "distance.csv")
    graph = summary["graph"]
    assert (graph["links_listed"], graph["duplicates"], graph["links_kept"]) == (295, 18, 277)
    assert graph["isolated"] == 0
    assert summary["read"]["distance rows"] == 295
    written = read_distances(Path(out) / "distances.csv")
    assert len(written) == 277 and not written.duplicated().any()
    assert "graph: links: 295 listed, 18 repeated (dropped), 277 kept" in capsys.readouterr().out


def test_link_with_two_costs_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # The real PEMS08 file with one of its repeats (153,62,330.9 at lines 3 and 165) changed.
    lines = (PEMS / "PEMS08" / "distance.csv").read_text().splitlines()
    assert lines[2] == lines[164] == "153,62,330.9"
    lines[164] = "153,62,331.5"
    links = tmp_path / "distance.csv"
    links.write_text("\n".join(lines) + "\n")
    npz = _stand_in(tmp_path / "PEMS08.npz", 48, 170, 3)
    argv = ["import", "npz", "--npz", str(npz), "--distances", str(links), "--channel", "flow"]
    line = user_error([*argv, *START, "--output-dir", str(tmp_path / "out")], capsys)
    assert line == (
        f"error: {links}: lines 3 and 165 list the link 153 -> 62 with different costs "
        "(330.9 and 331.5)"
    )
    assert not (tmp_path / "out" / "adjacency.npz").exists()
