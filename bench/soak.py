"""Soak: two replicas on PostgreSQL under steady mixed load (not a test: it prints figures).

    python bench/soak.py [--minutes 10] [--warmup 60]

Two replicas of the service on a throwaway durable PostgreSQL behind a local nginx
(``bench/replicas.py``), and paced traffic through nginx for ``--warmup`` seconds and then
``--minutes`` minutes (it stops by itself):

- ``GET /v1/forecast`` at ``--get-rate`` per second;
- ``POST /v1/observations`` from one client at ``--post-rate`` per second, one new time step of
  207 real readings each, in time order: every write moves the latest time on, so the
  live-accuracy recorder of each replica forecasts from it and scores earlier forecasts, and the
  forecast cache of each replica is invalidated by every write;
- ``GET /v1/accuracy`` and ``GET /readyz`` at ``--slow-rate`` per second each.

Prints one line a minute (requests, errors, resident memory of each replica), then the summary:
errors (any answer but 200; 0 expected), each replica's RSS after the warm-up and at the end
(``VmRSS``; growth under 10 % expected), and the database's row counts against what the traffic
implies, read directly (psycopg) once the recorders are idle:

- ``readings``: the seeded rows plus 207 per acknowledged write;
- ``forecasts``: one per time step written, within the retention
  (``TRAFFICCAST_ACCURACY_RETENTION_HOURS``, 48 h of data time by default) of the newest one;
- ``forecast_scores``: one per kept forecast and horizon step, each counting as many readings
  as the store holds at its target time (the recorders have scored every write).

Exit status 1 when a figure is not as expected.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from replicas import (
    Cluster,
    ObservationFeed,
    Outcome,
    Stream,
    cluster,
    load_average,
    machine,
    percentile_ms,
    status_counts,
    traffic,
)

HORIZON = 12
RETENTION_S = 48 * 3600


def settle(c: Cluster, newest: int, timeout_s: float = 120.0) -> float:
    """Wait until the recorders have forecast from ``newest`` (epoch seconds) and scored what
    they can; returns the seconds waited."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout_s:
        state = c.sql(
            "SELECT (SELECT MAX(made_from) FROM forecasts), (SELECT COUNT(*) FROM forecasts), "
            "(SELECT COUNT(*) FROM forecast_scores)"
        )[0]
        if state[0] == newest and state == last:
            break
        last = state
        time.sleep(2.0)
    return time.monotonic() - started


def summarize(
    c: Cluster, outcomes: list[Outcome], seeded: int, steps: list[int], rss: dict
) -> bool:
    ok = True
    print("summary:")
    for kind in ("forecast", "observations", "accuracy", "readyz"):
        mine = [o for o in outcomes if o.kind == kind]
        print(
            f"  {kind:<13} {len(mine):>6} requests  p50 {percentile_ms(mine, 50):7.1f} ms  "
            f"p99 {percentile_ms(mine, 99):7.1f} ms  {status_counts(mine)}"
        )
    errors = [o for o in outcomes if o.status != 200]
    ok &= not errors
    print(f"  errors (any answer but 200, or none): {len(errors)}")
    for r in c.replicas:
        start, end = rss[r.index][0], rss[r.index][-1]
        growth = 100.0 * (end - start) / start
        ok &= growth < 10.0
        peak = max(rss[r.index])
        print(
            f"  replica {r.index} RSS: {start:.0f} MiB after the warm-up, {end:.0f} MiB at the "
            f"end ({growth:+.1f} %), peak {peak:.0f} MiB"
        )
    windows = [r.metric("trafficcast_inference_batch_size_sum") for r in c.replicas]
    misses = [r.metric("trafficcast_forecast_cache_total", 'result="miss"') for r in c.replicas]
    print(
        "  windows forecast (each replica's trafficcast_inference_batch_size_sum): "
        + ", ".join(f"r{k} {w:.0f}" for k, w in enumerate(windows))
        + "; GET /v1/forecast cache misses: "
        + ", ".join(f"r{k} {m:.0f}" for k, m in enumerate(misses))
    )
    readings = c.sql("SELECT COUNT(*) FROM readings")[0][0]
    expected = seeded + 207 * len(steps)
    ok &= readings == expected
    print(
        f"  readings rows: {readings}; expected {expected} ({seeded} seeded + 207 x "
        f"{len(steps)} acknowledged writes, distinct times)"
    )
    newest = max(steps)
    kept = [s for s in steps if s >= newest - RETENTION_S]
    made = {int(m) for (m,) in c.sql("SELECT made_from FROM forecasts")}
    missing = set(kept) - made
    extra = made - set(kept)
    ok &= not missing and not extra
    print(
        f"  forecasts rows: {len(made)}; expected {len(kept)} (one per time step written, the "
        f"{len(kept)} within 48 h of the newest kept of {len(steps)}); missing {len(missing)}, "
        f"unexpected {len(extra)}"
    )
    scores = c.sql("SELECT COUNT(*) FROM forecast_scores")[0][0]
    stale = c.sql(
        "SELECT COUNT(*) FROM forecast_scores sc WHERE sc.n <> (SELECT COUNT(*) FROM readings r "
        "WHERE r.ts = sc.target_ts AND r.speed IS NOT NULL)"
    )[0][0]
    reached = c.sql(
        "SELECT COUNT(*) FROM forecast_scores WHERE n > 0 AND target_ts <= %s", (newest,)
    )[0][0]
    ok &= scores == HORIZON * len(made) and stale == 0
    print(
        f"  forecast_scores rows: {scores}; expected {HORIZON * len(made)} ({HORIZON} per kept "
        f"forecast, a step whose target time has no reading yet counting none); {reached} with "
        f"readings counted; {stale} whose count of readings differs from the readings stored at "
        "their target time"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS base")
    parser.add_argument("--get-rate", type=float, default=10.0, help="GET /v1/forecast per s")
    parser.add_argument("--post-rate", type=float, default=2.0, help="writes per second")
    parser.add_argument(
        "--slow-rate", type=float, default=0.5, help="GET /v1/accuracy and /readyz per second"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.warmup < 0:
        parser.error("--minutes must be positive and --warmup not negative")
    feed = ObservationFeed()
    with (
        tempfile.TemporaryDirectory(prefix="trafficcast-soak-") as tmp,
        cluster(Path(tmp), replicas=2, database="postgresql") as c,
    ):
        seeded = c.sql("SELECT COUNT(*) FROM readings")[0][0]
        print(f"{c.describe()}; {machine()}")
        print(
            f"paced traffic through nginx for {args.warmup:.0f} s of warm-up, then "
            f"{args.minutes:g} min: GET /v1/forecast {args.get_rate:g}/s, POST /v1/observations "
            f"{args.post_rate:g}/s (one client, one new 5-minute step of 207 readings each), "
            f"GET /v1/accuracy and /readyz {args.slow_rate:g}/s each"
        )
        rss: dict[int, list[float]] = {r.index: [] for r in c.replicas}
        t0 = time.perf_counter()
        outcomes: list[Outcome] = []

        async def soak() -> None:
            stop = asyncio.Event()
            streams = [
                Stream("forecast", 4, args.get_rate),
                Stream("observations", 1, args.post_rate),
                Stream("accuracy", 1, args.slow_rate),
                Stream("readyz", 1, args.slow_rate),
            ]
            task = asyncio.create_task(traffic(c.url, streams, stop, feed, outcomes, t0))
            await asyncio.sleep(args.warmup)
            warm = len(outcomes)
            for r in c.replicas:
                rss[r.index].append(r.rss_mib())
            print(
                f"after the warm-up: {warm} requests, {status_counts(outcomes)}; RSS "
                + ", ".join(f"r{k} {v[0]:.0f} MiB" for k, v in rss.items()),
                flush=True,
            )
            end = time.perf_counter() + args.minutes * 60
            while (left := end - time.perf_counter()) > 0:
                await asyncio.sleep(min(60.0, left))
                for r in c.replicas:
                    rss[r.index].append(r.rss_mib())
                done = outcomes[warm:]
                print(
                    f"{(time.perf_counter() - t0 - args.warmup) / 60:5.1f} min: "
                    f"{len(done)} requests, errors {sum(o.status != 200 for o in done)}; RSS "
                    + ", ".join(f"r{k} {v[-1]:.0f} MiB" for k, v in rss.items())
                    + f"; load average {load_average()}",
                    flush=True,
                )
            stop.set()
            await task

        asyncio.run(soak())
        steps = sorted({o.ts for o in outcomes if o.kind == "observations" and o.status == 200})
        waited = settle(c, max(steps))
        print(f"recorders idle {waited:.0f} s after the traffic stopped")
        ok = summarize(c, outcomes, seeded, steps, rss)
        print(f"result: {'as expected' if ok else 'NOT as expected'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
