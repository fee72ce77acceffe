"""``trafficcast registry list|show|promote|rollback|verify|import``: look after a model registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trafficcast.app.commands.common import optional_path, registry_argument, registry_dir
from trafficcast.app.registry import Registry, RegistryError, version_summary
from trafficcast.app.retrain import import_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "registry",
        help="list, inspect, promote, roll back and verify model registry versions",
        description="Manage a model registry (the directory `trafficcast retrain` writes).",
    )
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION")
    sub.required = True

    q = sub.add_parser("list", help="the versions, newest last; * marks the current one")
    registry_argument(q)
    q.set_defaults(handler=_list)

    q = sub.add_parser("show", help="a version's manifest as JSON (default: the current one)")
    registry_argument(q)
    q.add_argument("version", nargs="?", help="e.g. v0003")
    q.set_defaults(handler=_show)

    q = sub.add_parser("promote", help="make a version current (the service swaps to it)")
    registry_argument(q)
    q.add_argument("version", help="e.g. v0003")
    q.add_argument("--reason", default="promoted by hand", help="recorded in current.json")
    q.set_defaults(handler=_promote)

    q = sub.add_parser("rollback", help="make the previously current version current again")
    registry_argument(q)
    q.set_defaults(handler=_rollback)

    q = sub.add_parser(
        "verify", help="check every version's files against its manifest and the pointer"
    )
    registry_argument(q)
    q.set_defaults(handler=_verify)

    q = sub.add_parser(
        "import", help="publish a run directory from `trafficcast train` as a new version"
    )
    registry_argument(q)
    q.add_argument("run", metavar="RUN_DIR", help="run directory with model.pt")
    graph = q.add_mutually_exclusive_group(required=True)
    graph.add_argument("--distances", help="road distances CSV the run was trained with")
    graph.add_argument("--adjacency", help="adjacency .npz or adj_mx.pkl the run was trained with")
    q.add_argument("--threshold", type=float, default=0.1, help="adjacency threshold")
    q.add_argument(
        "--promote", action="store_true", help="make it current (the first version always is)"
    )
    q.set_defaults(handler=_import)


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(registry_dir(args)).require()


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    pointer = registry.current()
    versions = registry.versions()
    print(f"{'':2}{'version':<9} {'created_at':<26} {'holdout MAE':>11}  {'data end':<20} parent")
    for version in versions:
        s = version_summary(registry, version)
        mark = "*" if pointer is not None and pointer.version == version else " "
        mae = "n/a" if s["holdout_mae"] is None else f"{s['holdout_mae']:.4f}"
        print(
            f"{mark} {version:<9} {s['created_at'] or '':<26} {mae:>11}  "
            f"{str(s['data_end'] or ''):<20} {s['parent'] or '-'}"
        )
    if pointer is None:
        print("no current version (nothing promoted yet)")
    else:
        print(f"current: {pointer.version} (since {pointer.promoted_at}: {pointer.reason})")
    return 0


def _show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    pointer = registry.current()
    version = args.version or (pointer.version if pointer is not None else None)
    if version is None:
        raise RegistryError(f"{registry.root}: no current version; name one (registry list)")
    manifest = registry.manifest(version)
    manifest["current"] = pointer is not None and pointer.version == version
    print(json.dumps(manifest, indent=2))
    return 0


def _promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    with registry.lock("promote"):
        old = registry.current()
        pointer = registry.set_current(args.version, args.reason)
    print(f"current: {old.version if old else 'none'} -> {pointer.version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    with registry.lock("rollback"):
        old = registry.current()
        pointer = registry.rollback()
    print(f"current: {old.version if old else 'none'} -> {pointer.version} (rollback)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    registry = _registry(args)
    problems, notes = registry.verify()
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    pointer = registry.current() if not problems else None
    if problems:
        print(f"registry {registry.root}: {len(problems)} problem(s)")
        return 1
    current = pointer.version if pointer is not None else "none"
    print(f"registry {registry.root}: ok, {len(registry.versions())} version(s), current {current}")
    return 0


def _import(args: argparse.Namespace) -> int:
    version, promoted = import_run(
        registry_dir(args),
        Path(args.run),
        optional_path(args.distances),
        optional_path(args.adjacency),
        args.threshold,
        args.promote,
    )
    print(f"imported {args.run} as {version}{' (current)' if promoted else ''}")
    return 0
