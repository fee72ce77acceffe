"""What clients see when a replica dies or the database goes away (not a test: it prints figures).

    python bench/outage.py replica [--seconds 40]
    python bench/outage.py database [--before 15] [--down 30] [--after 30]

Both run two replicas of the service on a throwaway durable PostgreSQL behind a local nginx
(``bench/replicas.py``, the deployment's proxy semantics) under mixed traffic through nginx:
``GET /v1/forecast`` and ``POST /v1/observations`` (one new time step of 207 real readings each;
a write that failed is sent again before the next new one, as a client keeping its readings
would, so the stored times stay contiguous). Both end by checking, directly in the database
(psycopg), that every reading acknowledged with a 200 is stored: the exact ``(sensor, ts)`` keys.

``replica``   SIGKILLs one replica half way through a bounded run from closed-loop clients, and
              prints every failed request, whether it was in flight on the killed replica then
              (sent before the process was gone, answered after the signal).
``database``  stops PostgreSQL (``pg_ctl stop -m fast``) after ``--before`` seconds of paced
              traffic, starts it again ``--down`` seconds later, and goes on for ``--after``
              seconds; ``/readyz`` of each replica is polled directly. Prints the answers per
              phase, any 5xx other than 503, any 503 without ``Retry-After``, and how long after
              the database's start each replica was ready again and the first write succeeded.

Exit status 1 when a check fails (an acknowledged reading missing, a 5xx other than 503 or
a 503 without Retry-After, a failure not explained by the kill, no recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

from replicas import (
    Cluster,
    ObservationFeed,
    Outcome,
    Stream,
    acknowledged_keys,
    cluster,
    machine,
    nginx_errors,
    status_counts,
    stored_keys,
    traffic,
)


def check_acknowledged(c: Cluster, feed: ObservationFeed, outcomes: list[Outcome]) -> bool:
    """Print acknowledged rows against the rows found in the database; True when none is
    missing. Also counts the rows of writes that failed (a write cut after its commit is
    stored though never acknowledged: harmless, a retry rewrites the same rows)."""
    posts = [o for o in outcomes if o.kind == "observations"]
    acked = acknowledged_keys(outcomes, feed.sensor_ids)
    acked_written = sum(o.written or 0 for o in posts if o.status == 200)
    found = stored_keys(c, {ts for _, ts in acked})
    missing = acked - found
    failed_ts = {o.ts for o in posts if o.status != 200} - {ts for _, ts in acked}
    failed_stored = stored_keys(c, failed_ts) if failed_ts else set()
    total = c.sql("SELECT COUNT(*) FROM readings")[0][0]
    print(
        f"writes: {len(posts)} sent ({len({o.ts for o in posts})} distinct bodies), "
        f"{sum(o.status == 200 for o in posts)} acknowledged (200), {len(failed_ts)} bodies never"
    )
    print(
        f"acknowledged rows: {len(acked)} (sum of 'written': {acked_written}); found in the "
        f"database: {len(found)}; missing: {len(missing)}"
    )
    if failed_ts:
        print(
            f"rows of the {len(failed_ts)} never acknowledged bodies found stored anyway: "
            f"{len(failed_stored)} of {207 * len(failed_ts)}"
        )
    print(f"readings table: {total} rows (seeded day included)")
    if missing:
        print(f"MISSING (first 5): {sorted(missing)[:5]}")
    return not missing and acked_written == len(acked)


def run_replica_kill(args: argparse.Namespace, workdir: Path) -> int:
    feed = ObservationFeed()
    with cluster(workdir, replicas=2, database="postgresql") as c:
        victim = c.replicas[args.victim]
        print(f"{c.describe()}; {machine()}")
        print(
            f"{args.seconds:.0f} s of closed-loop traffic through nginx: {args.get_clients} clients "
            f"GET /v1/forecast, {args.post_clients} clients POST /v1/observations; replica "
            f"{victim.index} (pid {victim.pid}, port {victim.port}) SIGKILLed at "
            f"{args.seconds / 2:.0f} s"
        )
        t0 = time.perf_counter()
        killed_at: list[float] = []

        async def scenario() -> list[Outcome]:
            stop = asyncio.Event()
            outcomes: list[Outcome] = []

            async def kill_then_stop() -> None:
                await asyncio.sleep(args.seconds / 2)
                killed_at.append(time.perf_counter() - t0)
                victim.proc.send_signal(signal.SIGKILL)
                # The process dies some milliseconds after the signal (the kernel frees its
                # memory before it closes its sockets): until it is reaped, a request can still
                # reach it. The mark is late by a thread switch at most.
                await asyncio.to_thread(victim.proc.wait)
                killed_at.append(time.perf_counter() - t0)
                await asyncio.sleep(args.seconds / 2)
                stop.set()

            streams = [
                Stream("forecast", args.get_clients),
                Stream("observations", args.post_clients),
            ]
            await asyncio.gather(
                traffic(c.url, streams, stop, feed, outcomes, t0, resend=True), kill_then_stop()
            )
            return outcomes

        outcomes = asyncio.run(scenario())
        kill_t, reaped = killed_at
        print(
            f"SIGKILL sent at {kill_t:.2f} s; the process was gone (reaped) "
            f"{1000 * (reaped - kill_t):.0f} ms later"
        )
        port = f":{victim.port}"
        for kind in ("forecast", "observations"):
            mine = [o for o in outcomes if o.kind == kind]
            before = [o for o in mine if o.started < kill_t]
            after = [o for o in mine if o.started >= kill_t]
            print(
                f"{kind:<13} {len(mine):>5} requests; started before the kill: "
                f"{status_counts(before)}; after: {status_counts(after)}"
            )
        served_by = {}
        for o in outcomes:
            if o.status == 200 and o.upstream:
                served_by[o.upstream] = served_by.get(o.upstream, 0) + 1
        print(f"200 answers by upstream (X-Upstream): {served_by}")
        failed = [o for o in outcomes if o.status != 200]
        unexplained = 0
        print(f"failed requests: {len(failed)}")
        for o in failed:
            ended = o.started + o.seconds
            in_flight = o.started <= reaped and ended >= kill_t
            on_victim = o.upstream is None or port in o.upstream
            unexplained += not (in_flight and on_victim)
            print(
                f"  {o.kind:<13} started {o.started - kill_t:+.3f} s, ended {ended - kill_t:+.3f} "
                f"s from the kill; status {o.status or o.error}; upstream {o.upstream}; "
                f"in flight on the killed replica: {'yes' if in_flight and on_victim else 'NO'}"
            )
        print(f"nginx's error log: {nginx_errors(c) or 'empty'}")
        ok = check_acknowledged(c, feed, outcomes)
        print(
            f"result: {len(failed)} failed request(s), {unexplained} not in flight on the killed "
            f"replica; acknowledged readings {'all stored' if ok else 'NOT all stored'}"
        )
        return 0 if ok and not unexplained else 1


def first_after(outcomes: list[Outcome], kind: str, since: float) -> float | None:
    """Seconds from ``since`` to the end of the first 200 of ``kind`` answered after it."""
    ends = [
        o.started + o.seconds
        for o in outcomes
        if o.kind == kind and o.status == 200 and o.started + o.seconds >= since
    ]
    return min(ends) - since if ends else None


def run_database_outage(args: argparse.Namespace, workdir: Path) -> int:
    feed = ObservationFeed()
    with cluster(workdir, replicas=2, database="postgresql") as c:
        assert c.pg is not None
        print(f"{c.describe()}; {machine()}")
        print(
            f"paced traffic through nginx: GET /v1/forecast {args.get_rate:.0f}/s, POST "
            f"/v1/observations {args.post_rate:.0f}/s; GET /readyz of each replica directly "
            f"{args.readyz_rate:.0f}/s; database stopped (pg_ctl stop -m fast) after "
            f"{args.before:.0f} s, started again {args.down:.0f} s later, then {args.after:.0f} s"
        )
        t0 = time.perf_counter()
        marks: dict[str, float] = {}

        def mark(name: str) -> None:
            marks[name] = time.perf_counter() - t0

        async def scenario() -> list[Outcome]:
            stop = asyncio.Event()
            outcomes: list[Outcome] = []

            async def outage() -> None:
                await asyncio.sleep(args.before)
                mark("stop")
                await asyncio.to_thread(c.pg.stop, "fast")
                mark("stopped")
                await asyncio.sleep(args.down - (marks["stopped"] - marks["stop"]))
                mark("start")
                await asyncio.to_thread(c.pg.start)
                mark("started")
                await asyncio.sleep(args.after)
                stop.set()

            streams = [
                Stream("forecast", 4, args.get_rate),
                Stream("observations", 2, args.post_rate),
            ] + [
                Stream("readyz", 1, args.readyz_rate, url=r.url, name=f"readyz r{r.index}")
                for r in c.replicas
            ]
            await asyncio.gather(
                traffic(c.url, streams, stop, feed, outcomes, t0, resend=True), outage()
            )
            return outcomes

        outcomes = asyncio.run(scenario())
        print(
            f"database: stop began at {marks['stop']:.1f} s (pg_ctl returned after "
            f"{marks['stopped'] - marks['stop']:.2f} s), start began at {marks['start']:.1f} s "
            f"(accepting connections {marks['started'] - marks['start']:.2f} s later)"
        )
        phases = {
            "before": lambda o: o.started < marks["stop"],
            "during": lambda o: marks["stop"] <= o.started < marks["started"],
            "after": lambda o: o.started >= marks["started"],
        }
        kinds = ["forecast", "observations"] + [f"readyz r{r.index}" for r in c.replicas]
        labels = {"forecast": "GET /v1/forecast", "observations": "POST /v1/observations"}
        labels.update({f"readyz r{r.index}": f"GET /readyz (r{r.index})" for r in c.replicas})
        for phase, within in phases.items():
            print(f"{phase}:")
            for kind in kinds:
                mine = [o for o in outcomes if o.kind == kind and within(o)]
                print(f"  {labels[kind]:<22} {len(mine):>5}  {status_counts(mine)}")
        other_5xx = [o for o in outcomes if o.status >= 500 and o.status != 503]
        transport = [o for o in outcomes if o.status == 0]
        bare_503 = [o for o in outcomes if o.status == 503 and not o.retry_after]
        with_ra = {o.retry_after for o in outcomes if o.status == 503 and o.retry_after}
        print(
            f"5xx other than 503: {len(other_5xx)}"
            + (f" ({status_counts(other_5xx)})" if other_5xx else "")
            + f"; transport errors: {len(transport)}"
        )
        for o in other_5xx[:10]:
            print(f"  {o.kind} at {o.started:.2f} s: {o.status}, upstream {o.upstream}")
        print(
            f"503 answers: {sum(o.status == 503 for o in outcomes)}, without Retry-After: "
            f"{len(bare_503)}; Retry-After values: {sorted(with_ra) or 'none'}"
        )
        stale = [r.metric("trafficcast_forecasts_stale_total") for r in c.replicas]
        print(
            "GET /v1/forecast answered from the last forecast while the database was "
            "unreachable (trafficcast_forecasts_stale_total): "
            + ", ".join(f"r{k} {n:.0f}" for k, n in enumerate(stale))
        )
        since = marks["started"]
        recovered = True
        for r in c.replicas:
            t = first_after(outcomes, f"readyz r{r.index}", since)
            recovered &= t is not None
            shown = "never" if t is None else f"{t:.2f} s"
            print(f"replica {r.index}: first 200 on /readyz {shown} after the database started")
        t = first_after(outcomes, "observations", since)
        recovered &= t is not None
        shown = "never" if t is None else f"{t:.2f} s"
        print(f"first acknowledged write (through nginx): {shown} after the database started")
        ok = check_acknowledged(c, feed, outcomes)
        good = ok and recovered and not other_5xx and not bare_503 and not transport
        print(f"result: {'as expected' if good else 'NOT as expected'}")
        return 0 if good else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    kill = sub.add_parser("replica", help="SIGKILL one of two replicas under load")
    kill.add_argument("--seconds", type=float, default=40.0, help="length of the run")
    kill.add_argument("--get-clients", type=int, default=4)
    kill.add_argument("--post-clients", type=int, default=4)
    kill.add_argument("--victim", type=int, choices=[0, 1], default=1)
    db = sub.add_parser("database", help="stop the database under load, then start it")
    db.add_argument("--before", type=float, default=15.0, help="seconds before the stop")
    db.add_argument("--down", type=float, default=30.0, help="seconds the database is down")
    db.add_argument("--after", type=float, default=30.0, help="seconds after the start")
    db.add_argument("--get-rate", type=float, default=20.0, help="GET /v1/forecast per second")
    db.add_argument("--post-rate", type=float, default=4.0, help="writes per second")
    db.add_argument("--readyz-rate", type=float, default=10.0, help="per replica, per second")
    args = parser.parse_args(argv)
    if args.what == "replica" and args.seconds <= 0:
        parser.error(f"--seconds: {args.seconds}, must be positive")
    with tempfile.TemporaryDirectory(prefix="trafficcast-outage-") as tmp:
        if args.what == "replica":
            return run_replica_kill(args, Path(tmp))
        return run_database_outage(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
