"""Where a study lives: an SQLite file in the sweep folder by default, any SQLAlchemy URL (PostgreSQL for
several machines) when given. Optuna's database is what coordinates the workers.

Liveness is Optuna's heartbeat: each running trial's worker writes a heartbeat every `heartbeat_seconds`;
a trial whose heartbeat is older than twice that is stale, and the next worker to look marks it failed
and enqueues it again (`RetryHeartbeatStaleTrialCallback`). The retry copies the failed trial's
parameters and user attributes, among them `run` (the number of the trial that started the run, set
before it trains): the sweep keys run directories by it, so the retry resumes the same run from its
last.pt. We use Optuna's mechanism rather than our own bookkeeping because it already works across
machines (a file lock would only see this one) and marks the stale trial failed atomically, so two
workers never both take it over.
"""
from __future__ import annotations

import importlib.util
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import optuna

from cifarlab.errors import UserError

STUDY_DB = "study.db"
MAX_RETRIES = 3  # a trial killed this many times (e.g. out of memory each time) is left failed
OPEN_ATTEMPTS = 4
SQLITE_BUSY_SECONDS = 60  # several workers on one SQLite file wait for each other's writes this long


def default_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / STUDY_DB).resolve()}"


def redacted(url: str) -> str:
    """The URL without its password, for reports and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> None:
    """The storage URL's form, before anything is made (the sweep folder included)."""
    scheme = urlsplit(url).scheme
    if not scheme or scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise UserError(f"--storage must be an sqlite:///, postgresql:// or mysql:// URL, got {redacted(url)!r}")


OPTUNA_TABLES = {"studies", "trials", "version_info"}  # what every Optuna RDB schema version has
# Every table an Optuna schema makes (Optuna 5's, and alembic's own when Optuna upgrades one): a database holding
# only some of them is a schema another worker is making this moment (SQLite commits each CREATE TABLE on its
# own), or one a killed worker left half made; Optuna completes it (open_storage retries the creation race).
OPTUNA_SCHEMA = OPTUNA_TABLES | {
    "study_directions", "study_system_attributes", "study_user_attributes", "trial_heartbeats",
    "trial_intermediate_values", "trial_params", "trial_system_attributes", "trial_user_attributes", "trial_values",
    "alembic_version",
}
SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(url: str) -> None:
    """An SQLite storage that exists already must be an Optuna storage (or empty): Optuna would otherwise
    add its tables to whatever database of the user's the URL names. An Optuna database holding other
    studies is joined, as Optuna allows (the study name and the sweep's definition are checked then)."""
    from sqlalchemy.engine import make_url

    if not urlsplit(url).scheme.startswith("sqlite"):
        return
    database = make_url(url).database
    if not database or database == ":memory:" or "mode=memory" in url:
        # Optuna's heartbeat thread opens its own connection, which sees an empty database; and the study
        # would vanish with the process, so a rerun could not resume it
        raise UserError(f"--storage {url!r} is an in-memory SQLite database, which the workers' heartbeats and a "
                        f"rerun of the sweep cannot see; give a file, e.g. sqlite:///sweeps/study.db")
    if database.startswith("file:"):
        return
    path = Path(database)
    if path.is_dir():
        raise UserError(f"--storage {url!r} names a folder; give an SQLite file (sqlite:///path/study.db)")
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise UserError(f"--storage {url!r}: {path} is not an SQLite database; give a new file or an Optuna "
                        f"study's database")
    journal = path.with_name(path.name + "-journal")
    try:
        tables = _tables(path, "ro")
    except sqlite3.OperationalError as err:
        if not journal.exists():
            raise UserError(f"--storage {url!r}: {path} cannot be read as SQLite ({err})") from None
        # A process killed inside a write transaction (a sweep worker's heartbeat, kill -9) leaves a hot journal
        # that only a writer may roll back, and a read-only connection then fails with "attempt to write a
        # readonly database". Open it as any writer would, Optuna included: SQLite restores the database to
        # its last commit from the journal.
        try:
            tables = _tables(path, "rw")
        except sqlite3.Error as rw_err:
            raise UserError(f"--storage {url!r}: {path} has an unfinished transaction of a killed process "
                            f"({journal.name}) that could not be rolled back ({rw_err}); make both files "
                            f"writable and run again") from None
    except sqlite3.Error as err:
        raise UserError(f"--storage {url!r}: {path} cannot be read as SQLite ({err})") from None
    if tables and not OPTUNA_TABLES <= tables and not tables <= OPTUNA_SCHEMA:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UserError(f"--storage {url!r}: {path} is an SQLite database but not an Optuna study's (its tables: "
                        f"{shown}); a sweep would add Optuna's tables to it: give a new file")


def _tables(path: Path, mode: str) -> set[str]:
    """The table names of the SQLite file at `path`, opened with `mode` ro or rw."""
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=SQLITE_BUSY_SECONDS)
    try:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        connection.close()


def open_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats and retry of stale trials; a UserError when it cannot be reached."""
    check_url(url)
    check_sqlite_file(url)
    scheme = urlsplit(url).scheme
    url = with_driver(url)
    engine_kwargs: dict = {}
    if scheme.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" (Optuna 2.8)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat_seconds,
                                                  heartbeat_stale_trial_callback=retry_callback())
        except ImportError as err:
            raise UserError(f"--storage {redacted(url)!r} needs a database driver: {err} "
                            f"(PostgreSQL: pip install 'cifarlab[postgres]')") from None
        except Exception as err:  # SQLAlchemy's OperationalError and friends: say where and why in one line
            # Workers started together all create the schema of a new database; the losers of that race
            # find the tables half made. A moment later they are there: try again before giving up.
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(1.0 + attempt)
                continue
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot open study storage {redacted(url)!r}: {reason}") from None


def with_driver(url: str) -> str:
    """`postgresql://` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 takes plain
    postgresql:// to mean psycopg 3, and our `postgres` extra installs psycopg2-binary."""
    parts = urlsplit(url)
    if parts.scheme != "postgresql":
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return urlunsplit(parts._replace(scheme=f"postgresql+{driver}"))
    return url


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Enqueues a trial again (state WAITING) with its parameters and user attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


RUN_ATTR = "run"  # user attribute: the number of the trial whose run directory this trial trains


def run_number(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The number of the trial that started this trial's run (its own, unless it is a retry)."""
    number: Optional[int] = trial.user_attrs.get(RUN_ATTR)
    return int(number) if number is not None else trial.number
