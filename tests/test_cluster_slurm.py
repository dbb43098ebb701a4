"""Preemption on a real scheduler: docs/cluster.md's job script on a throwaway one-node SLURM cluster. The
warning signal makes the run checkpoint and exit, the script requeues the job, the job runs again and
continues the same run directory, and the run ends as one never interrupted, bit for bit."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _cluster import SMALL, assert_same_run, env, finish, free_port, start
from _postgres import postgres_server, why_not

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
MISSING = [name for name in DAEMONS if not shutil.which(name) and not Path("/usr/sbin", name).exists()]
# 192 steps of 24x24 images (~2 s on an idle 2-core CPU), a checkpoint every 2: the warning, sent once the first
# checkpoint is there, lands mid-run with time to spare, and the job's second start continues the run.
RUN = [*SMALL, "data.options={num_train: 2048, num_test: 256, image_size: 24}", "train.epochs=3",
       "checkpoint.every_steps=2"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"SLURM is not installed ({', '.join(MISSING)} missing): "
                                                       f"`apt-get install slurm-wlm munge` (.ci/run does)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs as root here; the test needs root")]


def job_script(array: bool = False) -> str:
    """An sbatch script docs/cluster.md shows (its `sh` blocks): the training job's, or the sweep's job array."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "cluster.md").read_text(), re.S)
    found = [block for block in blocks if ("#SBATCH --array" in block) == array]
    assert len(found) == 1 and found[0].startswith("#!/bin/bash\n#SBATCH"), "docs/cluster.md: one script of each"
    return found[0]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Slurm:
    """munged, slurmctld and slurmd for this test only: a generated slurm.conf and all state in `folder`."""

    def __init__(self, folder: Path):
        self.folder, self.host = folder, socket.gethostname().split(".")[0]
        self.env = dict(env(), SLURM_CONF=str(folder / "slurm.conf"))

    def start(self) -> None:
        f = self.folder
        for sub in ("munge", "state", "spool", "log"):
            (f / sub).mkdir(mode=0o700)
        (f / "munge" / "munge.key").write_bytes(os.urandom(1024))
        (f / "munge" / "munge.key").chmod(0o400)
        socket = f / "munge" / "socket"
        subprocess.run([_program("munged"), "--force", f"--socket={socket}", f"--key-file={f / 'munge' / 'munge.key'}",
                        f"--log-file={f / 'log' / 'munged.log'}", f"--pid-file={f / 'munge' / 'munged.pid'}",
                        f"--seed-file={f / 'munge' / 'seed'}"], check=True)
        (f / "slurm.conf").write_text(f"""ClusterName=cifarlab-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'log' / 'slurmctld.log'}
SlurmdLogFile={f / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run([_program("slurmctld"), "-c", "-i"], env=self.env, check=True)
        subprocess.run([_program("slurmd")], env=self.env, check=True)
        self.wait_for(lambda: self.run("sinfo", "-h", "-o", "%t").strip() == "idle", "the node to be idle")

    def stop(self) -> None:
        subprocess.run([_program("scontrol"), "shutdown"], env=self.env, capture_output=True)
        subprocess.run([_program("munged"), "--stop", f"--socket={self.folder / 'munge' / 'socket'}"],
                       capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):  # what `scontrol shutdown` left running
            path = self.folder / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text()), 15)
                except (ValueError, ProcessLookupError):
                    pass

    def run(self, *command: str) -> str:
        done = subprocess.run([_program(command[0]), *command[1:]], env=self.env, capture_output=True, text=True,
                              cwd=self.folder)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}\n{self.logs()}"
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        text = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def finished(self, job_id: str) -> bool:
        """The job completed; a job that ended any other way fails the test at once (not after the timeout)."""
        state = self.job(job_id)["JobState"]
        assert state in ("COMPLETED", "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"), \
            f"job {job_id} ended {state}\n{self.logs()}"
        return state == "COMPLETED"

    # 300 s: generous, since under a whole-suite run on 2 cores a job waits its turn for the CPU
    def wait_for(self, condition, what: str, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.logs()}"
            time.sleep(0.01)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-2000:] for path in sorted((self.folder / "log").glob("*")))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_a_preempted_job_requeues_itself_and_its_run_ends_as_an_uninterrupted_one(slurm, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "train.sbatch").write_text(job_script())
    reference = start([sys.executable, "-m", "cifarlab", "train", "smoke", *RUN, "--run-dir",
                       str(tmp_path / "uninterrupted")], tmp_path)
    job_id = slurm.run("sbatch", "--parsable", f"--chdir={jobs}", str(jobs / "train.sbatch"), "smoke", *RUN).strip()
    last = jobs / f"runs/job-{job_id}" / "checkpoints" / "last.pt"
    slurm.wait_for(last.exists, "the job's first checkpoint")
    # What SLURM does for `--signal=B:USR1@120` when the time is near: USR1 to the batch shell.
    slurm.run("scancel", "--signal=USR1", "--batch", job_id)
    slurm.wait_for(lambda: slurm.job(job_id)["Restarts"] == "1" and slurm.job(job_id)["JobState"] == "PENDING",
                   "the job to requeue itself")
    requeued = time.monotonic()
    # Released at once, not after SLURM's two minutes' hold, but only once the node has finished with the
    # first start and a new second has begun: slurmd revokes the first start's credential with a time in
    # whole seconds, and refused a relaunch released within the same second ("Job credential revoked",
    # the job failed; seen once in a whole-suite run).
    slurm.wait_for(lambda: slurm.run("sinfo", "-h", "-o", "%t").strip() == "idle", "the node to finish the first start")
    time.sleep(max(0.0, 2.0 - (time.monotonic() - requeued)))
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    slurm.wait_for(lambda: slurm.finished(job_id), "the requeued job to finish")
    log = (jobs / f"slurm-{job_id}.out").read_text()
    assert "SIGUSR1 received" in log and "resuming" in log, log
    assert log.count("run directory:") == 1, "the second start continued the run, it did not start one"
    finish(reference)
    assert_same_run(jobs / f"runs/job-{job_id}", tmp_path / "uninterrupted")


# A sweep of 3 trials, each like RUN on 8x8 images (a second or two): the warning lands in a trial's middle.
SWEEP_RUN = [*SMALL, "data.options={num_train: 2048, num_test: 256, image_size: 8}", "data.val_split=64",
             "train.epochs=3", "checkpoint.every_steps=2"]
SPACE = "optim.lr: {low: 0.02, high: 0.1, log: true}\n"


@pytest.mark.skipif(why_not() is not None, reason=str(why_not()))
def test_a_sweep_as_a_job_array_ends_with_n_trials_and_a_requeued_task_resumes_its_own_trial(slurm, tmp_path):
    """docs/cluster.md's job array: two tasks, each one sweep worker on one PostgreSQL study of 3 trials. One
    task gets the warning mid-trial, requeues itself and, started again, finishes that same trial's run
    (the other task leaves it alone), which ends as the same trial trained without interruption."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "sweep.sbatch").write_text(job_script(array=True))
    (jobs / "space.yaml").write_text(SPACE)
    with postgres_server() as url:
        array = slurm.run("sbatch", "--parsable", "--array=0-1", f"--chdir={jobs}", str(jobs / "sweep.sbatch"),
                          "smoke", "space.yaml", *SWEEP_RUN, "--trials", "3", "--storage", url, "--dir", "sweep",
                          "--name", "array", "--pruner", "none", "--heartbeat", "5", "--no-report").strip()
        # --heartbeat 5: Optuna fails a running trial whose heartbeat is 2 beats late; at 1 s, a loaded machine
        # (a whole-suite run beside two training tasks) starved one once, and a 4th trial replaced it.
        logs = {task: jobs / f"slurm-{array}_{task}.out" for task in (0, 1)}

        # The warning goes to the task whose job id is the array's own (SLURM gives it to one task): a script
        # that requeued "$SLURM_JOB_ID" there requeued every task, and the other's trial failed.
        slurm.wait_for(lambda: all(slurm.job(f"{array}_{t}")["JobState"] == "RUNNING" for t in logs),
                       "both tasks to start (a pending array is one job record)")
        task = next(task for task in logs if slurm.job(f"{array}_{task}")["JobId"] == array)
        job, other = f"{array}_{task}", f"{array}_{1 - task}"

        def mid_trial() -> list[Path]:
            mine = logs[task].read_text() if logs[task].exists() else ""
            return [path.parents[1] for path in (jobs / "sweep" / "trials").glob("*/checkpoints/last.pt")
                    if not (path.parents[1] / "summary.json").exists()
                    and f"trial {int(path.parents[1].name)} -> " in mine]

        slurm.wait_for(lambda: bool(mid_trial()), "a trial's first checkpoint in that task")
        run_dir = mid_trial()[0]
        number = int(run_dir.name)
        slurm.run("scancel", "--signal=USR1", "--batch", job)  # what `--signal=B:USR1@120` does near the limit
        reference = start([sys.executable, "-m", "cifarlab", "train", str(run_dir / "config.yaml"), "--run-dir",
                           str(tmp_path / "uninterrupted")], tmp_path)
        slurm.wait_for(lambda: slurm.job(job)["Restarts"] == "1" and slurm.job(job)["JobState"] == "PENDING",
                       "the task to requeue itself")
        time.sleep(3.0)  # a new second for slurmd's revoked credential of the first start (see the test above)
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        slurm.wait_for(lambda: all(slurm.finished(f"{array}_{other}") for other in logs), "both tasks to finish")
        assert slurm.job(other)["Restarts"] == "0", "the other task was requeued too"
        study = optuna.load_study(study_name="array", storage=url.replace("postgresql:", "postgresql+psycopg2:"))
        trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # exactly N trials: none added, none failed
    assert sorted(p.parent.name for p in (jobs / "sweep" / "trials").glob("*/config.yaml")) == ["0000", "0001", "0002"]
    assert trials[number].user_attrs["worker"] == f"slurm-{job}"  # taken again by the requeued task itself
    own, other = logs[task].read_text(), logs[1 - task].read_text()
    assert "SIGUSR1 received" in own and own.count(f"trial {number} -> ") == 2 and "resuming" in own, own[-3000:]
    assert f"trial {number} -> " not in other, other[-3000:]
    finish(reference)
    assert_same_run(run_dir, tmp_path / "uninterrupted")
