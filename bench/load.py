"""Load benchmark of the forecast service on the loopback interface (not a test: it prints figures).

    python bench/load.py [--run RUN_DIR] [--requests 5000] [--concurrency 16] [--time-limit 60]
    python bench/load.py --url http://127.0.0.1:8000 --scenarios post   # an already running server
    python bench/load.py --interval 0.8    # every request also asks for the 80 % band

Scenarios, each against a fresh ``uvicorn app.service:app_from_env`` subprocess on 127.0.0.1
unless ``--url`` is given:

``post-batched``  POST /v1/forecast, all sensors, micro-batching on (``--window-ms``, default 3)
``post-single``   the same with micro-batching off (one forward pass per request)
``get-cached``    GET /v1/forecast from the seeded store: computed once, then served from cache

Each scenario sends at most ``--requests`` requests from ``--concurrency`` concurrent clients and
stops at ``--time-limit`` seconds, whichever comes first; it prints p50/p99 latency, throughput
and the number of errors (any non-200 answer or transport error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402

BUNDLED_RUN = ROOT / "app" / "bundled" / "metr-la-week"


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
            f"{self.name:<14} {self.sent:>6} req  {self.sent / self.seconds:>8.1f} req/s  "
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
    bodies: list[bytes],
    requests: int,
    concurrency: int,
    time_limit: float,
    name: str,
) -> Result:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            nonlocal errors, sent
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)] if bodies else None
                sent += 1
                started = time.perf_counter()
                try:
                    r = await client.request(method, path, content=body, headers=headers)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, run_dir: Path, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"server-{self.port}.log", "wb")  # noqa: SIM115
        full_env = {
            **os.environ,
            "TRAFFICCAST_RUN_DIR": str(run_dir),
            "TRAFFICCAST_OBSERVATIONS_DB": str(workdir / f"obs-{self.port}.sqlite3"),
            "TRAFFICCAST_SEED_OBSERVATIONS": str(data.sample_speeds_path()),
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.service:app_from_env"]
            + ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout_s} s")

    def batch_sizes(self) -> str:
        text = httpx.get(f"{self.url}/metrics").text
        values = {}
        for line in text.splitlines():
            if line.startswith("trafficcast_inference_batch_size_"):
                key, value = line.split(" ")
                values[key.split("{")[0].rsplit("_", 1)[-1]] = float(value)
        if not values.get("count"):
            return ""
        return f"  (forward passes {values['count']:.0f}, mean batch {values['sum'] / values['count']:.1f})"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


SCENARIOS = {
    "post-batched": ("POST", "/v1/forecast", "batched"),
    "post-single": ("POST", "/v1/forecast", "single"),
    "get-cached": ("GET", "/v1/forecast", "batched"),
}


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
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.", "http://localhost")):
        parser.error("--url must be a loopback address (this benchmark never leaves the machine)")
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}")
    if not args.url and not (args.run / "model.pt").exists():
        parser.error(f"{args.run}: no model.pt (train one, or give --run / --url)")

    bodies = forecast_bodies(interval=args.interval)
    print(
        f"{args.requests} requests max, {args.concurrency} concurrent clients, "
        f"{args.time_limit:.0f} s limit per scenario; POST bodies: 12 steps x 207 sensors "
        f"({len(bodies[0]) / 1024:.0f} KiB); torch threads {args.torch_threads}; "
        f"{os.cpu_count()} CPUs; intervals {args.interval or 'off'}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="trafficcast-load-") as tmp:
        for name in names:
            method, path, mode = SCENARIOS[name]
            if method == "GET" and args.interval is not None:
                path = f"{path}?interval={args.interval}"
            server = None
            url = args.url
            if url is None:
                env = {
                    "TRAFFICCAST_TORCH_THREADS": str(args.torch_threads),
                    "TRAFFICCAST_MICROBATCH_WINDOW_MS": str(
                        args.window_ms if mode == "batched" else 0
                    ),
                    "TRAFFICCAST_MICROBATCH_MAX_SIZE": str(args.max_batch),
                }
                server = Server(args.run, env, Path(tmp))
                server.wait_ready()
                url = server.url
            try:
                payload = bodies if method == "POST" else []
                # Warm up: first forward passes allocate; the cache fills on the first GET.
                asyncio.run(
                    drive(
                        url,
                        method,
                        path,
                        payload,
                        2 * args.concurrency,
                        args.concurrency,
                        30.0,
                        "warm-up",
                    )
                )
                result = asyncio.run(
                    drive(
                        url,
                        method,
                        path,
                        payload,
                        args.requests,
                        args.concurrency,
                        args.time_limit,
                        name,
                    )
                )
                extra = server.batch_sizes() if server is not None and method == "POST" else ""
                print(result.line() + extra, flush=True)
                results.append(result)
            finally:
                if server is not None:
                    server.stop()
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
