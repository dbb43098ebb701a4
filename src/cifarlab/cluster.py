"""A run named by its job: `cifarlab train RECIPE ... --run-dir PATH` starts the run in PATH the first time
and continues it every time after, so a job that a scheduler requeues, or that torchrun restarts after a
worker died, finds its run instead of starting a new one (docs/cluster.md).

PATH is the run's identity; the job names it from what stays the same across its restarts, e.g.
`--run-dir runs/smoke/job-$SLURM_JOB_ID` (SLURM keeps the job id when it requeues) or torchrun's
`--rdzv-id`. What the same command finds in PATH:

- nothing (or an empty folder): a new run, as `train`;
- a run with another config: refused in one line naming the keys (a new job needs a new PATH);
- a run that stopped before its first checkpoint: started again from scratch in the same folder;
- a run with a checkpoint: continued from it, as `resume` (the run's own config, exact continuation);
- a finished run: nothing trained again; says so and returns the run (exit code 0).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Sequence, Union

from cifarlab.config import Config, load_config
from cifarlab.config_diff import BOOKKEEPING, MISSING, differences
from cifarlab.data.prepare import ARRAYS
from cifarlab.errors import UserError
from cifarlab.experiment import Run, resume, train
from cifarlab.messages import say
from cifarlab.run import layout
from cifarlab.run.lock import RunLock
from cifarlab.run.metrics import read_metrics
from cifarlab.run.summary import read_summary
from cifarlab.runtime import is_rank_zero
from cifarlab.trainer.callbacks import Callback


def train_or_continue(config: Union[Config, str, None], overrides: Sequence[str] = (), *,
                      run_dir: Union[str, Path], data=None, callbacks: Sequence[Callback] = ()) -> Run:
    """Train `config` (+ `overrides`) into `run_dir`, or continue the run already there (see the module's
    docstring for each case). Every rank of a torchrun job calls this with the same arguments and sees the
    same folder: the checks read files only, before the ranks meet, and rank 0 alone clears a folder."""
    run_dir = layout.given_run_dir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; give a folder (new, empty, or a run to continue)")
    if not (run_dir / layout.CONFIG).is_file():
        return train(config, overrides, run_dir=run_dir, data=data, callbacks=callbacks)
    requested = config if isinstance(config, Config) else load_config(config, list(overrides))
    if data is not None:
        requested = requested.model_copy(update={"data": requested.data.model_copy(update={"dataset": ARRAYS})})
    refuse_other_config(requested, load_config(str(run_dir / layout.CONFIG)), run_dir)
    last = layout.checkpoint_path(run_dir, layout.LAST)
    if not last.exists() and not layout.previous_path(last).exists():
        if is_rank_zero():
            _clear_unstarted(run_dir)
        return train(config, overrides, run_dir=run_dir, data=data, callbacks=callbacks)
    finished = finished_run(run_dir)
    if finished is not None:
        if is_rank_zero():
            say(f"run {run_dir} already finished ({finished.summary.epochs_completed} epochs, status "
                f"completed): nothing to train")
        return finished
    return resume(run_dir, data=data, callbacks=callbacks)


def refuse_other_config(requested: Config, recorded: Config, run_dir: Path) -> None:
    """A UserError naming the first keys where the run in `run_dir` was trained with other values. Values
    the run resolved (`auto` sizes, a range-tested peak) and where it reports (`output.*`) are not compared."""
    ignored = tuple(BOOKKEEPING)
    found = {key: pair for key, pair in differences(requested.to_dict(), recorded.to_dict()).items()
             if pair[0] != "auto" and not key.startswith(ignored)}
    if found:
        shown = ", ".join(f"{key}={_value(ours)} here but {_value(theirs)} there"
                          for key, (ours, theirs) in list(found.items())[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise UserError(f"--run-dir {run_dir} holds a run with another config: {shown}{more}; continue it with "
                        f"its own settings, or give a new --run-dir for a new run")


def _value(value) -> str:
    return "(unset)" if value is MISSING else json.dumps(value)


def finished_run(run_dir: Path) -> Optional[Run]:
    """The run in `run_dir` when its summary.json says it completed every epoch its config asks for."""
    try:
        summary = read_summary(run_dir, required=False)
    except UserError:  # unreadable: not finished as far as we know; resume rebuilds it from last.pt
        return None
    cfg = load_config(str(run_dir / layout.CONFIG))
    if summary is None or summary.status != "completed" or (summary.epochs_completed or 0) < 1:
        return None
    return Run(run_dir, cfg, summary, read_metrics(run_dir, kind="epoch"))


def _clear_unstarted(run_dir: Path) -> None:
    """Empty a run folder whose run was stopped before its first checkpoint: nothing in it can be continued,
    and `train` starts only in an empty folder. Under the run lock: a run still at work is never touched."""
    with RunLock(run_dir).acquire():
        say(f"run {run_dir} stopped before its first checkpoint: starting it again")
        for path in run_dir.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
