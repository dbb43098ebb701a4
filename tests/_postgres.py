"""A real PostgreSQL server for a test: Debian's binaries, `initdb` + `pg_ctl` into a temporary folder,
listening on 127.0.0.1 on a free port, run as the `postgres` user (the server refuses to run as root)."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

BIN_DIRS = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)] \
    if Path("/usr/lib/postgresql").is_dir() else []


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, newest version first, else where PATH finds them."""
    for folder in BIN_DIRS:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def why_not() -> str | None:
    """None when a server can be started here, else the reason to skip."""
    if postgres_bin() is None:
        return "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' user to run the server as"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return "starting a server needs root (runuser -u postgres) or the postgres user"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(database: str = "sweeps"):
    """Yields a postgresql:// URL of a fresh database on a server that is stopped (and its folder removed)
    afterwards. The folder is made directly under the temp dir: pytest's own are closed to other users."""
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="cifarlab-postgres-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (folder, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    quiet = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=folder)
    subprocess.run(_as_postgres([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "--no-sync"]), **quiet)
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                 str(folder / "server.log"), "-w", "-t", "60", "start"]), **quiet)
    try:
        subprocess.run(_as_postgres([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     database]), **quiet)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(_as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)
