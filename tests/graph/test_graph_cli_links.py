"""``trafficcast graph`` and ``graph-info`` on the real PEMS0x link files: the links' account
they print, the cost's unit only where the user states it, a link with two costs refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from trafficcast.app.cli import main

PEMS = Path(__file__).resolve().parent / "fixtures" / "pems0x"


def _ids(tmp_path: Path, num_sensors: int) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text(",".join(str(k) for k in range(num_sensors)))
    return path


def test_graph_on_pems07_states_no_unit_and_prints_the_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adj.npz"
    argv = ["graph", "--distances", str(PEMS / "PEMS07" / "PEMS07.csv")]
    assert main([*argv, "--sensor-ids", str(_ids(tmp_path, 883)), "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # PEMS07's costs run 0.03 to 20.5: not metres, and the release does not say what they are.
    assert lines[0] == (
        f"wrote {out}: 883 sensors, 790 nonzero weights (threshold 0.1, sigma 1.9 in the "
        "file's unit)"
    )
    assert lines[1] == (
        "links: 866 listed, 0 repeated (dropped), 790 kept (directed); isolated sensors: 27 of "
        "883 (10, 49, 52, 66, 109, ...)"
    )


def test_graph_cost_unit_is_printed_when_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adj.npz"
    argv = ["graph", "--distances", str(PEMS / "PEMS04" / "distance.csv"), "--cost-unit", "m"]
    assert main([*argv, "--sensor-ids", str(_ids(tmp_path, 307)), "--output", str(out)]) == 0
    assert "(threshold 0.1, sigma 257.1 m)" in capsys.readouterr().out


def test_graph_on_pems08_counts_its_repeats_and_graph_info_the_same_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adj.npz"
    argv = ["graph", "--distances", str(PEMS / "PEMS08" / "distance.csv")]
    assert main([*argv, "--sensor-ids", str(_ids(tmp_path, 170)), "--output", str(out)]) == 0
    links = capsys.readouterr().out.splitlines()[1]
    assert links.startswith("links: 295 listed, 18 repeated (dropped), 137 kept (directed); ")
    assert main(["graph-info", str(out)]) == 0
    info = capsys.readouterr().out.splitlines()
    assert info[-2].startswith("isolated nodes: 48 (1, 2, 3, 8, 18, ...)")
    assert info[-1] == (
        "links: 137 kept (directed); isolated sensors: 48 of 170 (1, 2, 3, 8, 18, ...)"
    )


def test_graph_refuses_a_link_with_two_costs_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    links = tmp_path / "distance.csv"
    links.write_text("from,to,cost\n0,1,10\n1,2,20\n0,1,10\n0,1,12\n")
    out = tmp_path / "adj.npz"
    argv = ["graph", "--distances", str(links), "--sensor-ids", str(_ids(tmp_path, 3))]
    assert main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {links}: lines 2 and 5 list the link 0 -> 1 with different costs (10 and 12)"
    ]
    assert not out.exists()
