"""One run over two torchrun "nodes" on this host, and a torchrun job that loses a worker to kill -9 and
restarts: each ends where an uninterrupted one-node run of the same world size does, bit for bit; ranks
that disagree refuse before training; the same `train --run-dir` command on a finished run trains nothing."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from _cluster import SMALL, assert_same_run, cifarlab, finish, free_port, start, torchrun

from _runs import tree_hashes
from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint

# Four torchrun launches of two processes (or two launchers of one): about 40 s on 2 cores.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]


def two_nodes(tmp: Path, run_dir: Path, *overrides_per_node: list[str]) -> list:
    """Two launchers, `--nnodes=2`, one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    return [start(torchrun("--nnodes=2", f"--node-rank={node}", "--nproc-per-node=1", "--rdzv-backend=c10d",
                           f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-nodes")
                  + cifarlab("train", "smoke", *overrides, "--run-dir", str(run_dir)), tmp)
            for node, overrides in enumerate(overrides_per_node)]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> Path:
    """The uninterrupted reference: one launcher, two processes (world size 2, as every run below)."""
    tmp = tmp_path_factory.mktemp("one-node")
    finish(start(torchrun("--standalone", "--nproc-per-node=2") + cifarlab("train", "smoke", *SMALL, "--run-dir",
                                                                          str(tmp / "run")), tmp))
    return tmp / "run"


def test_two_nodes_train_one_run_that_equals_a_one_node_run(one_node, tmp_path):
    launchers = two_nodes(tmp_path, tmp_path / "run", SMALL, SMALL)
    outputs = [finish(process) for process in launchers]
    assert sum(output.count("done: ") for output in outputs) == 1, "global rank 0 reports once"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "one run directory, nothing else written"
    assert "2 processes" in (tmp_path / "run" / "summary.json").read_text()
    assert_same_run(tmp_path / "run", one_node)


def test_nodes_with_another_config_refuse_in_one_line_before_training(tmp_path):
    # Two processes set up as torchrun would (env:// rendezvous), without its agents: the check is the same.
    port, run_dir = free_port(), str(tmp_path / "run")
    launched = [start([sys.executable, *cifarlab("train", "smoke", *overrides, "--run-dir", run_dir)], tmp_path,
                      RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                for rank, overrides in enumerate([SMALL, [*SMALL, "optim.lr=0.01"]])]
    outputs = [process.communicate(timeout=120)[0] for process in launched]
    assert [process.returncode for process in launched] == [2, 2], outputs
    said = [line for output in outputs for line in output.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("cifarlab train: error: rank 1 of 2 has another config"), outputs
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_elastic_restart_after_kill_9_resumes_the_run_and_equals_an_uninterrupted_one(one_node, tmp_path):
    run = tmp_path / "run"
    launcher = start(torchrun("--standalone", "--nproc-per-node=2", "--max-restarts=1")
                     + cifarlab("train", "smoke", *SMALL, "checkpoint.every_steps=2", "--run-dir", str(run)), tmp_path)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 90
    while not last.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert last.exists(), "the run never wrote a checkpoint"
    os.kill(_worker(launcher.pid, rank=1), signal.SIGKILL)  # mid-epoch 1: the first checkpoint is at step 2 of 64
    output = finish(launcher)
    assert "resuming" in output, f"the restarted group did not resume the run:\n{output[-3000:]}"
    assert load_checkpoint(last)["step"] == 128
    assert_same_run(run, one_node)


def test_the_same_command_on_a_finished_run_trains_nothing_and_another_config_is_refused(one_node, capsys):
    before = tree_hashes(one_node)
    assert main(["train", "smoke", *SMALL, "--run-dir", str(one_node)]) == 0
    assert "already finished" in capsys.readouterr().err
    assert main(["train", "smoke", *SMALL, "optim.lr=0.01", "--run-dir", str(one_node)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "optim.lr=0.01 here but 0.05 there" in error, error
    assert tree_hashes(one_node) == before, "the finished run is left as it was"


def _worker(launcher_pid: int, rank: int) -> int:
    """The pid of the torchrun worker of `rank` under the launcher (read from each child's RANK variable)."""
    for _ in range(500):
        for pid in _descendants(launcher_pid):
            try:
                variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in variables and b"TORCHELASTIC_RUN_ID" in b"".join(variables):
                return pid
        time.sleep(0.01)
    raise AssertionError(f"no worker of rank {rank} under {launcher_pid}")


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(child) for child in text]
    return children + [grandchild for child in children for grandchild in _descendants(child)]
