"""``trafficcast import FORMAT``: public traffic-data layouts into the project's own files.

Formats: ``pems`` (Caltrans PeMS station 5-minute files and metadata), ``npz`` (ASTGCN-style
PEMS03/04/07/08), ``largest`` (LargeST) and ``libcity`` (LibCity atomic files). Each writes
``OUTPUT_DIR/speeds.h5`` and what the layout gives of ``locations.csv``, ``distances.csv`` or
``adjacency.npz``, plus ``import.json``, and prints what was read, dropped and missing.
"""

from __future__ import annotations

import argparse
import sys

from trafficcast.app.commands.common import optional_path
from trafficcast.data.errors import DataInputError
from trafficcast.data.importers import (
    find_atomic_files,
    import_largest,
    import_libcity,
    import_npz,
    import_pems,
    parse_freq_minutes,
    parse_start,
    write_import,
)
from trafficcast.data.speeds import QUANTITIES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="turn a downloaded public data set (PeMS, ASTGCN .npz, LargeST, LibCity) into "
        "the project's files",
        description="Write OUTPUT_DIR/speeds.h5 (the METR-LA layout, missing readings empty), "
        "sensor_ids.txt, locations.csv and distances.csv or adjacency.npz where the layout has "
        "them, and import.json (what was read, dropped and missing).",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True

    f = formats.add_parser("pems", help="Caltrans PeMS station 5-minute files and metadata")
    f.add_argument(
        "--station-files",
        nargs="+",
        required=True,
        metavar="F",
        help="dNN_text_station_5min_YYYY_MM_DD.txt[.gz], one per day",
    )
    f.add_argument(
        "--meta", nargs="+", required=True, metavar="M", help="dNN_text_meta_YYYY_MM_DD.txt"
    )
    f.add_argument("--quantity", choices=QUANTITIES, default="speed")
    f.add_argument(
        "--min-observed",
        type=float,
        default=50.0,
        metavar="PCT",
        help="readings of rows with less '%% observed' are missing (default 50)",
    )
    f.add_argument(
        "--lane-types",
        nargs="+",
        default=["ML"],
        metavar="T",
        help="station lane types to keep (default ML, mainline; also HV, OR, FR, CD, CH, FF)",
    )
    _common(f, _run_pems)

    f = formats.add_parser("npz", help="ASTGCN-style PEMS03/04/07/08 (.npz, distance.csv)")
    f.add_argument("--npz", required=True, metavar="F", help="PEMS0x.npz (array 'data')")
    f.add_argument(
        "--channel",
        required=True,
        help="speed, flow, occupancy or a channel number (PEMS04/08: flow, occupancy, speed; "
        "PEMS03/07: flow only)",
    )
    f.add_argument("--distances", required=True, metavar="D.csv", help="distance.csv")
    f.add_argument(
        "--sensor-ids", metavar="IDS.txt", help="ids in column order (PEMS03.txt); default 0..N-1"
    )
    f.add_argument("--start", metavar="TIMESTAMP", help="the first timestamp (the file has none)")
    f.add_argument("--freq", metavar="STEP", help="the time step, e.g. 5min")
    _common(f, _run_npz)

    f = formats.add_parser("largest", help="LargeST: yearly HDF flow table and ca_meta.csv")
    f.add_argument("--hdf", required=True, metavar="F", help="e.g. ca_his_raw_2019.h5")
    f.add_argument("--meta", required=True, metavar="M", help="ca_meta.csv")
    f.add_argument("--sensors", type=int, metavar="N", help="the first N sensors of the metadata")
    f.add_argument(
        "--district",
        action="append",
        metavar="D",
        help="keep these districts (repeat or comma-separate; GBA 4, SD 11, GLA 7,8,12)",
    )
    f.add_argument("--key", help="the HDF key, when the file holds several tables")
    _common(f, _run_largest)

    f = formats.add_parser("libcity", help="LibCity atomic files (.geo, .rel, .dyna)")
    f.add_argument("--dir", metavar="D", help="the dataset folder (one .geo, .rel, .dyna)")
    f.add_argument("--geo", metavar="F")
    f.add_argument("--rel", metavar="F")
    f.add_argument("--dyna", metavar="F")
    f.add_argument("--config", metavar="F", help="config.json (default: the one in --dir)")
    f.add_argument("--column", help="the .dyna column (default: the config's data_col)")
    _common(f, _run_libcity)


def _common(p: argparse.ArgumentParser, handler) -> None:
    p.add_argument("--output-dir", required=True, metavar="DIR", help="created if needed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=handler)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _run_pems(args: argparse.Namespace) -> int:
    result = import_pems(
        args.station_files,
        args.meta,
        quantity=args.quantity,
        min_observed=args.min_observed,
        lane_types=args.lane_types,
        progress=_progress(args),
    )
    return _finish(result, args.output_dir)


def _run_npz(args: argparse.Namespace) -> int:
    if args.start is None or args.freq is None:
        raise DataInputError(
            f"{args.npz} has no timestamps: give --start TIMESTAMP and --freq STEP "
            "(e.g. --start 2018-01-01T00:00 --freq 5min)"
        )
    result = import_npz(
        args.npz,
        channel=args.channel,
        distances=args.distances,
        sensor_ids=args.sensor_ids,
        start=parse_start(args.start),
        freq_minutes=parse_freq_minutes(args.freq),
    )
    return _finish(result, args.output_dir)


def _run_largest(args: argparse.Namespace) -> int:
    districts = None
    if args.district:
        districts = [d.strip() for item in args.district for d in item.split(",") if d.strip()]
    result = import_largest(
        args.hdf, args.meta, num_sensors=args.sensors, districts=districts, key=args.key
    )
    return _finish(result, args.output_dir)


def _run_libcity(args: argparse.Namespace) -> int:
    named = {"geo": args.geo, "rel": args.rel, "dyna": args.dyna}
    if args.dir is not None:
        if any(named.values()):
            raise DataInputError("give either --dir or --geo/--rel/--dyna, not both")
        files = find_atomic_files(args.dir)
    else:
        files = {**{kind: optional_path(path) for kind, path in named.items()}, "config": None}
    geo, rel, dyna = files["geo"], files["rel"], files["dyna"]
    if geo is None or rel is None or dyna is None:
        absent = [f"--{kind}" for kind in named if files[kind] is None]
        raise DataInputError(
            f"give --dir, or all of --geo, --rel and --dyna ({absent[0]} is missing)"
        )
    result = import_libcity(
        geo,
        rel,
        dyna,
        config=optional_path(args.config) or files["config"],
        column=args.column,
        progress=_progress(args),
    )
    return _finish(result, args.output_dir)


def _finish(result, output_dir: str) -> int:
    paths = write_import(result, output_dir)
    facts = result.summary()
    print(
        f"imported {result.format}: {facts['quantity']}, {facts['sensors']} sensors x "
        f"{facts['steps']} steps of {facts['freq_minutes']} min ({facts['start']} to "
        f"{facts['end']}), {facts['missing_pct']:.2f}% missing"
    )
    print("read: " + ", ".join(f"{count} {what}" for what, count in facts["read"].items()))
    dropped = [f"{count} {what}" for what, count in facts["dropped"].items() if count]
    print("dropped: " + ("; ".join(dropped) if dropped else "nothing"))
    if result.graph is not None:
        print(f"graph: {result.graph.describe()}")
    for note in facts["notes"]:
        print(f"note: {note}")
    if facts["config"]:
        print(f"config: train on this {facts['quantity']} table with `{facts['config']}`")
    for path in paths:
        print(f"wrote {path}")
    return 0
