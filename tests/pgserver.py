"""A throwaway PostgreSQL server for the tests and the benchmarks.

``initdb`` in a temporary directory, then ``pg_ctl`` on a free 127.0.0.1 port with its socket in
that directory, trust authentication for local connections only. PostgreSQL refuses to run as
root, so when this process is root the server runs as the unprivileged ``postgres`` user of
Debian's package (``runuser``), owning only its own directory. The binaries come from ``PATH`` or
Debian's ``/usr/lib/postgresql/<version>/bin``; :func:`find_bin_dir` is None when neither has them.

    with PostgresServer(tmp_path / "pg") as pg:
        engine = create_engine(pg.url)
        pg.stop(); pg.start()          # the database goes away and comes back on the same port
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

DB_NAME = "trafficcast"
DB_USER = "trafficcast"


def find_bin_dir() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres``; None when PostgreSQL is absent."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in ``base`` (created if new), serving database ``trafficcast``
    to user ``trafficcast`` on ``127.0.0.1:port``.

    ``durable=False`` turns off fsync and synchronous commit: for tests, where a power cut
    cannot matter; benchmarks keep the defaults.
    """

    def __init__(self, base: Path, port: int | None = None, durable: bool = False) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bin_dir
        self.base = Path(base)
        self.data = self.base / "data"
        self.port = port or free_port()
        self.durable = durable
        self.log = self.base / "server.log"
        self._as_user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_user is not None:
            cmd = ["runuser", "-u", self._as_user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        """Create the cluster and the database (once)."""
        self.base.mkdir(parents=True, exist_ok=True)
        if self._as_user is not None:
            user = pwd.getpwnam(self._as_user)
            os.chown(self.base, user.pw_uid, user.pw_gid)
            # The user must reach the folder through its parents (pytest's are root's, 0700).
            for parent in self.base.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        if (self.data / "PG_VERSION").exists():
            return
        self._run(
            "initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8",
            "--no-sync", "--locale=C",
        )  # fmt: skip
        self.start()
        self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {DB_NAME}",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server (returns once it accepts connections)."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends the sessions, ``immediate`` is a crash (no shutdown
        checkpoint; the next start recovers from the WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def __enter__(self) -> PostgresServer:
        self.init()
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")


def wait_until(predicate, timeout: float, every: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
