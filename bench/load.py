"""Load benchmark of the forecast service on the loopback interface (not a test: it prints figures).

    python bench/load.py [--run RUN_DIR] [--requests 5000] [--concurrency 16] [--time-limit 60]
    python bench/load.py --url http://127.0.0.1:8000 --scenarios post   # an already running server
    python bench/load.py --interval 0.8    # every request also asks for the 80 % band
    python bench/load.py --replicas 2 --database postgresql    # two replicas behind nginx

Scenarios, each against fresh service processes on 127.0.0.1 (``bench/replicas.py``: one by
default, on its own SQLite file; ``--replicas N`` of them on one ``--database``, behind a local
nginx when N > 1 or with ``--nginx``) unless ``--url`` is given:

``post-batched``       POST /v1/forecast, all sensors, micro-batching on (``--window-ms``, default 3)
``post-single``        the same with micro-batching off (one forward pass per request)
``get-cached``         GET /v1/forecast from the seeded store: computed once, then served from cache
``post-observations``  POST /v1/observations: one time step of all 207 sensors' real readings
                       (the bundled week's) per request, each at a new time after the seeded day

Each scenario sends at most ``--requests`` requests from ``--concurrency`` concurrent clients and
stops at ``--time-limit`` seconds, whichever comes first; it prints p50/p99 latency, throughput
and the number of errors (any non-200 answer or transport error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replicas import API_KEY, BUNDLED_RUN, ObservationFeed, cluster  # noqa: E402

from trafficcast import data  # noqa: E402


@dataclass
class Result:
    name: str
    sent: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    def line(self) -> str:
        ok = self.latencies_ms
        p50 = float(np.percentile(ok, 50)) if len(ok) else math.nan
        p99 = float(np.percentile(ok, 99)) if len(ok) else math.nan
        return (
            f"{self.name:<17} {self.sent:>6} req  {self.sent / self.seconds:>8.1f} req/s  "
            f"p50 {p50:>8.1f} ms  p99 {p99:>8.1f} ms  errors {self.errors}  ({self.seconds:.1f} s)"
        )


def forecast_bodies(count: int = 8, interval: float | None = None) -> list[bytes]:
    """POST bodies: ``count`` different windows of the bundled week, all 207 sensors each (with
    ``"interval"`` when given)."""
    week = data.read_speeds(data.sample_speeds_path())
    bodies = []
    for k in range(count):
        end = week.num_steps - k * 12
        rows = slice(end - 12, end)
        values = np.where(week.mask[rows], week.values[rows], np.nan)
        body = {
            "timestamps": [t.isoformat() for t in week.index[rows]],
            "sensors": week.sensor_ids,
            "speeds": [[None if math.isnan(v) else round(float(v), 3) for v in r] for r in values],
        }
        if interval is not None:
            body["interval"] = interval
        bodies.append(json.dumps(body).encode())
    return bodies


async def drive(
    url: str,
    method: str,
    path: str,
    body: Callable[[int], bytes] | None,
    requests: int,
    concurrency: int,
    time_limit: float,
    name: str,
    api_key: str = API_KEY,
) -> Result:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json", "X-API-Key": api_key}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            nonlocal errors, sent
            while sent < requests and time.perf_counter() < deadline:
                content = body(sent) if body is not None else None
                sent += 1
                started = time.perf_counter()
                try:
                    r = await client.request(method, path, content=content, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - started) * 1000.0)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result(name, sent, errors, seconds, np.asarray(latencies))


SCENARIOS = {
    "post-batched": ("POST", "/v1/forecast", "batched"),
    "post-single": ("POST", "/v1/forecast", "single"),
    "get-cached": ("GET", "/v1/forecast", "batched"),
    "post-observations": ("POST", "/v1/observations", "batched"),
}


def request_bodies(
    name: str, bodies: list[bytes], feed: ObservationFeed | None, first: int
) -> Callable[[int], bytes] | None:
    """The body of a scenario's ``k``-th request: POST /v1/forecast cycles through ``bodies``;
    POST /v1/observations sends ``feed``'s body ``first + k`` (a new time each); a GET none."""
    method, path, _ = SCENARIOS[name]
    if path == "/v1/observations":
        assert feed is not None
        return lambda k: feed.body(first + k)
    if method == "POST":
        return lambda k: bodies[k % len(bodies)]
    return None


def batch_sizes(replicas: list) -> str:
    """The forward passes and their mean batch size, over all replicas (their /metrics)."""
    count = sum(r.metric("trafficcast_inference_batch_size_count") for r in replicas)
    total = sum(r.metric("trafficcast_inference_batch_size_sum") for r in replicas)
    return f"  (forward passes {count:.0f}, mean batch {total / count:.1f})" if count else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=BUNDLED_RUN, help="run directory to serve")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per scenario")
    parser.add_argument("--window-ms", type=float, default=3.0, help="micro-batching window")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--interval",
        type=float,
        help="ask every forecast for its band at this central coverage (e.g. 0.8)",
    )
    parser.add_argument(
        "--scenarios",
        default="post-batched,post-single,get-cached",
        help=f"comma-separated, from {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--api-key",
        default=API_KEY,
        help="X-API-Key of the writes (post-observations) with --url; the started replicas "
        "accept the default",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="service processes, all on one database"
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="sqlite: one shared file; postgresql: a throwaway durable PostgreSQL cluster",
    )
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="front a single replica with nginx too (always done for more than one)",
    )
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.", "http://localhost")):
        parser.error("--url must be a loopback address (this benchmark never leaves the machine)")
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}")
    if not args.url and not (args.run / "model.pt").exists():
        parser.error(f"{args.run}: no model.pt (train one, or give --run / --url)")
    if args.replicas < 1:
        parser.error(f"--replicas: {args.replicas}, at least 1")

    bodies = forecast_bodies(interval=args.interval)
    feed = ObservationFeed() if "post-observations" in names else None
    proxy = args.nginx or args.replicas > 1
    where = (
        args.url
        if args.url
        else f"{args.replicas} replica(s) on {args.database}"
        + (", behind nginx (round-robin)" if proxy else "")
    )
    print(
        f"{args.requests} requests max, {args.concurrency} concurrent clients, "
        f"{args.time_limit:.0f} s limit per scenario; POST /v1/forecast bodies: 12 steps x 207 "
        f"sensors ({len(bodies[0]) / 1024:.0f} KiB); POST /v1/observations bodies: 1 step x 207 "
        f"sensors, a new time each; torch threads {args.torch_threads}; {os.cpu_count()} CPUs; "
        f"intervals {args.interval or 'off'}; {where}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="trafficcast-load-") as tmp:
        for name in names:
            method, path, mode = SCENARIOS[name]
            if method == "GET" and args.interval is not None:
                path = f"{path}?interval={args.interval}"
            warm = 2 * args.concurrency
            warm_body = request_bodies(name, bodies, feed, first=0)
            run_body = request_bodies(name, bodies, feed, first=warm)
            env = {
                "TRAFFICCAST_TORCH_THREADS": str(args.torch_threads),
                "TRAFFICCAST_MICROBATCH_WINDOW_MS": str(args.window_ms if mode == "batched" else 0),
                "TRAFFICCAST_MICROBATCH_MAX_SIZE": str(args.max_batch),
            }
            with contextlib.ExitStack() as stack:
                url = args.url
                replicas = []
                if url is None:
                    c = stack.enter_context(
                        cluster(
                            Path(tmp) / name,
                            replicas=args.replicas,
                            database=args.database,
                            proxy=proxy,
                            env=env,
                            run_dir=args.run,
                        )
                    )
                    url, replicas = c.url, c.replicas
                # Warm up: first forward passes allocate; the cache fills on the first GET.
                asyncio.run(
                    drive(
                        url,
                        method,
                        path,
                        warm_body,
                        warm,
                        args.concurrency,
                        30.0,
                        "warm-up",
                        args.api_key,
                    )
                )
                result = asyncio.run(
                    drive(
                        url,
                        method,
                        path,
                        run_body,
                        args.requests,
                        args.concurrency,
                        args.time_limit,
                        name,
                        args.api_key,
                    )
                )
                extra = batch_sizes(replicas) if path == "/v1/forecast" and method == "POST" else ""
                print(result.line() + extra, flush=True)
                results.append(result)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
