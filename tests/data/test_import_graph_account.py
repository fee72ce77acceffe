"""The graph account every importer with a graph records (``import.json`` ``graph``): LibCity's
``.rel`` as distances and as weights, repeats dropped and counted, a link with two costs refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.data.test_import_common import user_error
from tests.data.test_import_libcity import POINTS, write_libcity
from trafficcast.app.cli import main
from trafficcast.graph import read_distances

_WEIGHTS = {"data_col": ["traffic_speed"], "set_weight_link_or_dist": "dist",
            "calculate_weight_adj": False, "time_intervals": 300}  # fmt: skip


def _repeat_first_link(rel: Path, cost: str) -> None:
    """Append the ``.rel``'s first link again (line 5), with ``cost``."""
    first = rel.read_text().splitlines()[1].split(",")
    rel.write_text(rel.read_text() + f"3,geo,{first[2]},{first[3]},{cost}\n")


def _import(tmp_path: Path, files: dict) -> list[str]:
    argv = ["import", "libcity", "--geo", str(files["geo"]), "--rel", str(files["rel"])]
    argv += ["--dyna", str(files["dyna"]), "--config", str(tmp_path / "in" / "config.json")]
    return [*argv, "--output-dir", str(tmp_path / "out")]


def test_libcity_distances_repeat_dropped_and_counted(tmp_path: Path, capsys) -> None:
    files = write_libcity(tmp_path / "in")
    _repeat_first_link(files["rel"], "1380.2")
    assert main(_import(tmp_path, files)) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "import.json").read_text())
    # Four sensors on a path of three links, one of them listed twice: none isolated.
    assert summary["graph"] == {
        "files": ["distances.csv"],
        "links_listed": 4,
        "links_kept": 3,
        "duplicates": 1,
        "isolated": 0,
        "self_loops": 0,
        "directed": True,
    }
    assert len(read_distances(tmp_path / "out" / "distances.csv")) == 3
    assert "graph: links: 4 listed, 1 repeated (dropped), 3 kept (directed); " in printed


def test_libcity_weights_count_zero_weight_links_as_not_kept(tmp_path: Path, capsys) -> None:
    files = write_libcity(tmp_path / "in", info=_WEIGHTS, rel_costs=(0.9, 0.0, 0.7))
    assert main(_import(tmp_path, files)) == 0
    summary = json.loads((tmp_path / "out" / "import.json").read_text())
    graph = summary["graph"]
    assert graph["files"] == ["adjacency.npz"]
    assert (graph["links_listed"], graph["links_kept"], graph["isolated"]) == (3, 2, 0)
    capsys.readouterr()


def test_libcity_link_with_two_costs_is_one_error_line(tmp_path: Path, capsys) -> None:
    files = write_libcity(tmp_path / "in")
    _repeat_first_link(files["rel"], "1400")
    ids = list(POINTS)
    line = user_error(_import(tmp_path, files), capsys)
    assert line == (
        f"error: {files['rel']}: lines 2 and 5 list the link {ids[0]} -> {ids[1]} with different "
        "costs (1380.2 and 1400)"
    )


def test_a_layout_without_a_graph_records_none(tmp_path: Path) -> None:
    # PeMS and LargeST give coordinates only: no graph file, and "graph": null.
    from tests.data.test_import_common import _result

    values = np.ones((3, 2), dtype=np.float32)
    result = _result(values, values > 0)
    assert result.graph_files() == [] and result.summary()["graph"] is None
    with_links = _result(values, values > 0, adjacency=np.eye(2, dtype=np.float32))
    assert with_links.summary()["graph"] == {"files": ["adjacency.npz"]}
