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


def open_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats and retry of stale trials; a UserError when it cannot be reached."""
    scheme = urlsplit(url).scheme
    if not scheme or scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise UserError(f"--storage must be an sqlite:///, postgresql:// or mysql:// URL, got {redacted(url)!r}")
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
