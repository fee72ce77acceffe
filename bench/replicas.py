"""Replicas of the forecast service on one database, behind a local nginx: the launcher and the
traffic the replica benchmarks share (``load.py``, ``soak.py``, ``outage.py``). Not a test.

    with cluster(Path(tmp), replicas=2, database="postgresql") as c:
        httpx.get(f"{c.url}/v1/forecast")      # through nginx, round-robin over the replicas
        c.replicas[0].kill()                   # SIGKILL
        c.pg.stop("fast"); c.pg.start()        # the database goes away and comes back

Every replica is ``uvicorn --factory trafficcast.app.service:app_from_env`` on a free 127.0.0.1 port, serving
the same registry-less run directory (the bundled run by default) with one torch thread, the API
key :data:`API_KEY`, and the store seeded with the last day of the bundled week. With
``database="postgresql"`` they share a throwaway PostgreSQL cluster (``tests/pgserver.py``, with
fsync and synchronous commit on, as in production); with ``"sqlite"`` they share one SQLite file.

nginx (Debian's ``nginx-light``) has the proxy semantics of the deployment's
``deploy/nginx/nginx.conf``: round-robin, a replica that refused, timed out or answered 502/503
left out for 5 s, a request passed on to the next replica on those failures, but a POST only if
no replica received it yet. Unlike the deployment it proxies to fixed 127.0.0.1 ports (no
resolver), and it adds an ``X-Upstream`` header naming the replica(s) that answered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pgserver import PostgresServer  # noqa: E402
from trafficcast import data  # noqa: E402

BUNDLED_RUN = ROOT / "app" / "bundled" / "metr-la-week"
API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``url`` until it answers 200; exit with the log's name if ``proc`` dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout_s:.0f} s; see {log}")


@dataclass
class Replica:
    """One uvicorn process of the service."""

    index: int
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        """Resident memory now (``VmRSS`` of ``/proc/<pid>/status``), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, requests in flight are cut."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metric(self, name: str, label: str = "") -> float:
        """The sum of a Prometheus sample's values over its labels, or over those with
        ``label`` (e.g. ``result="miss"``) among them; 0 when absent."""
        text = httpx.get(f"{self.url}/metrics", timeout=10.0).text
        total = 0.0
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.startswith(name) and sample[len(name) :][:1] in ("", "{") and label in sample:
                total += float(value)
        return total


NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {dir}/client_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;

    upstream api {{
        zone api 64k;
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 16m;

        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 10s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def nginx_conf(workdir: Path, port: int, backends: list[int]) -> str:
    """The local twin of ``deploy/nginx/nginx.conf`` for 127.0.0.1 backends."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in backends
    )
    return NGINX_CONF.format(dir=workdir, port=port, servers=servers)


@dataclass
class Cluster:
    """What :func:`cluster` started; ``url`` is nginx's, or the only replica's without it."""

    replicas: list[Replica]
    url: str
    database: str
    pg: PostgresServer | None
    sqlite_path: Path | None
    nginx: subprocess.Popen | None = None
    workdir: Path = field(default=Path("."))

    def describe(self) -> str:
        proxy = "nginx round-robin" if self.nginx is not None else "no proxy"
        db = "PostgreSQL (durable, one cluster)" if self.pg else "SQLite (one shared file)"
        return f"{len(self.replicas)} replica(s), {proxy}, {db}"

    def sql(self, query: str, params: tuple | list | None = None) -> list[tuple]:
        """Rows of a query run directly on the PostgreSQL database (psycopg, autocommit)."""
        import psycopg

        if self.pg is None:
            raise RuntimeError("sql() needs the PostgreSQL database")
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()


def replica_env(database_url: str | None, sqlite_path: Path | None, run_dir: Path) -> dict:
    """The environment of a replica: this process's, minus any TRAFFICCAST_* setting, plus the
    benchmark's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICCAST_")}
    env.update(
        {
            "TRAFFICCAST_RUN_DIR": str(run_dir),
            "TRAFFICCAST_SEED_OBSERVATIONS": str(data.sample_speeds_path()),
            "TRAFFICCAST_API_KEYS": API_KEY,
            "TRAFFICCAST_TORCH_THREADS": "1",
            "TRAFFICCAST_TRAIN_IF_MISSING": "false",
        }
    )
    if database_url is not None:
        env["TRAFFICCAST_DATABASE_URL"] = database_url
    else:
        env["TRAFFICCAST_OBSERVATIONS_DB"] = str(sqlite_path)
    return env


@contextlib.contextmanager
def cluster(
    workdir: Path,
    replicas: int = 2,
    database: str = "postgresql",
    proxy: bool | None = None,
    env: dict[str, str] | None = None,
    run_dir: Path = BUNDLED_RUN,
    ready_timeout_s: float = 300.0,
) -> Iterator[Cluster]:
    """Start the database, ``replicas`` service processes on it (all at once: the migrations
    at start-up take turns) and, when ``proxy`` (default: more than one replica), nginx in front;
    yield once every replica and nginx answer ``/readyz`` with 200; stop them all on exit.

    ``env``: extra TRAFFICCAST_* settings for every replica. Logs stay in ``workdir``.
    """
    if database not in ("postgresql", "sqlite"):
        raise ValueError(f"database: {database!r}, expected postgresql or sqlite")
    proxy = replicas > 1 if proxy is None else proxy
    if proxy and shutil.which("nginx") is None:
        raise SystemExit(
            "error: nginx is not installed "
            "(apt-get install -y -qq --no-install-recommends nginx-light)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    # nginx's workers (user nobody when started as root) create their temporary files here.
    os.chmod(workdir, 0o755)
    with contextlib.ExitStack() as stack:
        pg = sqlite_path = None
        if database == "postgresql":
            pg = stack.enter_context(PostgresServer(workdir / "pg", durable=True))
            database_url = pg.url
        else:
            sqlite_path = workdir / "observations.sqlite3"
            database_url = None
        base_env = {**replica_env(database_url, sqlite_path, run_dir), **(env or {})}
        started: list[Replica] = []
        stack.callback(lambda: [r.stop() for r in started])
        for k in range(replicas):
            port = free_port()
            log = workdir / f"replica-{k}.log"
            out = stack.enter_context(open(log, "wb"))  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "trafficcast.app.service:app_from_env"]
                + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                cwd=ROOT,
                env=base_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            started.append(Replica(k, port, proc, log))
        for r in started:
            wait_for(f"{r.url}/readyz", ready_timeout_s, r.proc, r.log)
        nginx = None
        url = started[0].url
        if proxy:
            port = free_port()
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_conf(workdir, port, [r.port for r in started]))
            error_log = workdir / "nginx-error.log"
            nginx = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", str(workdir), "-e", str(error_log)]
                + ["-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )

            def stop_nginx() -> None:
                nginx.send_signal(signal.SIGQUIT)
                try:
                    nginx.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    nginx.kill()
                    nginx.wait()

            stack.callback(stop_nginx)
            url = f"http://127.0.0.1:{port}"
            wait_for(f"{url}/readyz", 30.0, nginx, error_log)
        yield Cluster(started, url, database, pg, sqlite_path, nginx, workdir)


class ObservationFeed:
    """``POST /v1/observations`` bodies of real readings at distinct times: body ``k`` holds
    one time step, all 207 sensors of the bundled week, the readings of its step ``k`` (cycling)
    stamped ``k + 1`` steps after the week's end, so every body writes 207 new ``(sensor, ts)``
    rows (a missing reading is stored as NULL, a row too) and moves the latest time forward.
    """

    def __init__(self) -> None:
        week = data.read_speeds(data.sample_speeds_path())
        self.sensor_ids = list(week.sensor_ids)
        self.values = np.where(week.mask, week.values, np.nan)  # (T, N)
        self.start = week.index[-1]
        self.step = pd.Timedelta(minutes=week.freq_minutes)

    def timestamp(self, k: int) -> pd.Timestamp:
        return self.start + (k + 1) * self.step

    def epoch_seconds(self, k: int) -> int:
        """The ``ts`` column body ``k`` writes (seconds since the epoch of the naive time)."""
        return int(self.timestamp(k).value // 1_000_000_000)

    def body(self, k: int) -> bytes:
        row = self.values[k % len(self.values)]
        return json.dumps(
            {
                "timestamps": [self.timestamp(k).isoformat()],
                "sensors": self.sensor_ids,
                "speeds": [[None if math.isnan(v) else round(float(v), 3) for v in row]],
            }
        ).encode()


@dataclass
class Outcome:
    """One request: what, when (seconds since the traffic began), and what came back."""

    kind: str
    started: float
    seconds: float
    status: int  # 0: transport error (no HTTP answer)
    retry_after: str | None = None
    upstream: str | None = None
    ts: int | None = None  # observations: the time the body wrote
    written: int | None = None  # observations: rows acknowledged (200 answers)
    error: str | None = None


GET_PATHS = {"forecast": "/v1/forecast", "accuracy": "/v1/accuracy", "readyz": "/readyz"}


@dataclass
class Stream:
    """Requests of one kind, sent by ``workers`` clients, paced to ``rate`` per second in all
    (``None``: each client sends its next request as soon as its last one is answered)."""

    kind: str  # "observations" or one of GET_PATHS
    workers: int
    rate: float | None = None
    url: str | None = None  # default: the cluster's url
    name: str | None = None  # the outcomes' kind; default: kind


async def traffic(
    url: str,
    streams: list[Stream],
    stop: asyncio.Event,
    feed: ObservationFeed | None = None,
    outcomes: list[Outcome] | None = None,
    t0: float | None = None,
    first_body: int = 0,
    resend: bool = False,
) -> list[Outcome]:
    """Send ``streams`` until ``stop`` is set; every request's :class:`Outcome` is appended to
    ``outcomes`` (returned). Observation bodies are numbered from ``first_body`` up, each sent
    once, or with ``resend`` until it is answered 200: a write that failed (5xx, no answer) is
    sent again before any new one, at the stream's pace (not after Retry-After, so that the
    first write accepted after an outage times the service, not a client's back-off), as a
    client that keeps its readings until they are stored would.
    ``t0``: the ``time.perf_counter()`` that outcomes' times count from."""
    outcomes = [] if outcomes is None else outcomes
    t0 = time.perf_counter() if t0 is None else t0
    next_body = first_body
    failed: collections.deque[int] = collections.deque()
    connections = sum(s.workers for s in streams)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def one(stream: Stream) -> None:
            nonlocal next_body
            base = stream.url or url
            ts = body = None
            headers = {"X-API-Key": API_KEY}
            if stream.kind == "observations":
                assert feed is not None
                if failed:
                    k = failed.popleft()
                else:
                    k, next_body = next_body, next_body + 1
                ts, body = feed.epoch_seconds(k), feed.body(k)
                headers["content-type"] = "application/json"
                request = client.build_request(
                    "POST", f"{base}/v1/observations", content=body, headers=headers
                )
            else:
                request = client.build_request("GET", base + GET_PATHS[stream.kind])
            started = time.perf_counter()
            outcome = Outcome(stream.name or stream.kind, started - t0, 0.0, 0, ts=ts)
            try:
                r = await client.send(request)
                outcome.status = r.status_code
                outcome.retry_after = r.headers.get("retry-after")
                outcome.upstream = r.headers.get("x-upstream")
                if stream.kind == "observations" and r.status_code == 200:
                    outcome.written = int(r.json()["written"])
            except httpx.HTTPError as exc:
                outcome.error = type(exc).__name__
            if resend and stream.kind == "observations" and outcome.status in (0, 502, 503, 504):
                failed.append(k)
            outcome.seconds = time.perf_counter() - started
            outcomes.append(outcome)

        async def worker(stream: Stream, offset: float) -> None:
            period = stream.workers / stream.rate if stream.rate else 0.0
            due = time.perf_counter() + offset * period
            while not stop.is_set():
                if period:
                    delay = due - time.perf_counter()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                        if stop.is_set():
                            break
                    due += period
                await one(stream)

        await asyncio.gather(*(worker(s, k / s.workers) for s in streams for k in range(s.workers)))
    return outcomes


async def stop_after(seconds: float, stop: asyncio.Event) -> None:
    await asyncio.sleep(seconds)
    stop.set()


def percentile_ms(outcomes: list[Outcome], q: float) -> float:
    values = [o.seconds * 1000.0 for o in outcomes if o.status == 200]
    return float(np.percentile(values, q)) if values else math.nan


def status_counts(outcomes: list[Outcome]) -> str:
    """``200: 812, 503: 4, transport error (RemoteProtocolError): 1`` (by frequency)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status else f"transport error ({o.error})"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def acknowledged_keys(outcomes: list[Outcome], sensor_ids: list[str]) -> set[tuple[str, int]]:
    """The ``(sensor, ts)`` rows of every observation write answered 200."""
    return {
        (sid, o.ts)
        for o in outcomes
        if o.kind == "observations" and o.status == 200 and o.ts is not None
        for sid in sensor_ids
    }


def stored_keys(c: Cluster, timestamps: set[int]) -> set[tuple[str, int]]:
    """The ``(sensor, ts)`` rows of the readings table at ``timestamps``, read directly."""
    rows = c.sql("SELECT sensor_id, ts FROM readings WHERE ts = ANY(%s)", (sorted(timestamps),))
    return {(str(s), int(t)) for s, t in rows}


def nginx_errors(c: Cluster) -> str:
    """nginx's error log, summarised: ``N x <message> (<request line>)`` per distinct pair."""
    log = c.workdir / "nginx-error.log"
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        found = re.search(r"\*\d+ (.*?), client: .*?request: \"(\S+ \S+)", line)
        if found:
            message = re.sub(r"\(\d+: ", "(", found.group(1))
            key = f"{message} ({found.group(2)})"
            counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} x {k}" for k, n in sorted(counts.items()))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({model}), load average {load_average()}"
