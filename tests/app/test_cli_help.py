"""Every ``trafficcast`` subcommand's ``--help`` as argparse prints it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from trafficcast.app.cli import build_parser


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser below it (``registry list``, ``db upgrade``...)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from parsers(sub)


def test_no_help_shows_a_doubled_percent_sign() -> None:
    # argparse %-formats help strings but not descriptions: "%%" belongs in the first only.
    everything = list(parsers(build_parser()))
    names = {p.prog for p in everything}
    assert {"trafficcast evaluate", "trafficcast retrain", "trafficcast registry list"} <= names
    doubled = {p.prog: p.format_help() for p in everything if "%%" in p.format_help()}
    assert doubled == {}
    evaluate = next(p for p in everything if p.prog == "trafficcast evaluate")
    assert "(the last 20% in time)" in evaluate.format_help()
    retrain = next(p for p in everything if p.prog == "trafficcast retrain")
    assert "0.01 = 1%)" in " ".join(retrain.format_help().split())
