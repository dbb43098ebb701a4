"""Checkpoint files: atomic saves, a sha256 that catches truncation and flipped bits, fallback to the
previous good file, and loads that never run code."""
from __future__ import annotations

import hashlib
import io
import os
import time

import pytest
import torch

from cifarlab import atomic
from cifarlab.errors import UserError
from cifarlab.run import checkpoint as ckpt
from cifarlab.run.checkpoint import load_checkpoint, load_checkpoint_with_path, save_checkpoint


def _payload(step: int) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "model": {"w": torch.full((64, 64), float(step))}, "optimizer": {},
            "config": {}, "epoch": 0, "step": step, "classes": [], "mean": [], "std": [], "history": [],
            "status": "running", "extra": {}}


def test_save_rotates_previous_and_plain_torch_load_still_reads_it(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(_payload(1), path)
    save_checkpoint(_payload(2), path)
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(tmp_path / "ckpt" / "last.prev.pt")["step"] == 1
    assert torch.load(path, weights_only=True)["step"] == 2  # the trailer does not bother torch.load
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.prev.pt", "last.pt"]  # no temporary left


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-trailer", "empty"])
def test_damaged_newest_file_falls_back_to_previous_with_a_warning(tmp_path, capsys, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1), path)
    save_checkpoint(_payload(2), path)
    data = path.read_bytes()
    broken = {"truncate": data[: len(data) - 200], "no-trailer": data[: -ckpt.TRAILER_BYTES], "empty": b"",
              "flip": data[:3000] + bytes([data[3000] ^ 1]) + data[3001:]}[damage]
    path.write_bytes(broken)
    if damage == "flip":  # flipped bits in tensor data: torch.load alone reads it without complaint
        torch.load(path, weights_only=True)
    payload, used = load_checkpoint_with_path(path)
    assert (payload["step"], used.name) == (1, "last.prev.pt")
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("warning: ") and "last.prev.pt" in err


def test_both_files_bad_is_one_user_error_about_the_newest(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"junk")
    ckpt.previous_path(path).write_bytes(b"junk too")
    with pytest.raises(UserError, match="last.pt is truncated or not a cifarlab checkpoint"):
        load_checkpoint(path)


def test_kill_during_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """A save that dies half-way (here: the write raises) leaves last.pt as it was and no temporary file."""
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1), path)
    before = path.read_bytes()

    real_fdopen = os.fdopen

    class HalfFile:
        def __init__(self, *args, **kwargs):
            self.handle = real_fdopen(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fdopen", HalfFile)
    with pytest.raises(UserError, match="No space left on device"):
        save_checkpoint(_payload(2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_sigkill_during_save_in_a_child_process_never_corrupts_last(tmp_path):
    """Fork children that save in a loop and SIGKILL them at varied moments: last.pt always loads."""
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(0), path)
    big = {**_payload(0), "model": {"w": torch.randn(1024, 1024)}}  # 4 MB: the kill often lands mid-write
    for delay in (0.002, 0.01, 0.03, 0.06):
        pid = os.fork()
        if pid == 0:  # child: save forever
            try:
                step = 1
                while True:
                    save_checkpoint({**big, "step": step}, path)
                    step += 1
            finally:
                os._exit(0)
        time.sleep(delay)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert isinstance(load_checkpoint(path)["step"], int)
        for tmp in tmp_path.glob(".last.pt.tmp-*"):  # a killed writer's temporary is never read
            tmp.unlink()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    """Even with a correct checksum trailer, weights_only refuses a pickled os.system call."""
    buffer = io.BytesIO()
    torch.save({"format": 1, "model": _Evil()}, buffer)
    data = buffer.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(data + ckpt.TRAILER_TAG + hashlib.sha256(data).hexdigest().encode() + b"\n")
    with pytest.raises(UserError, match="corrupt or not a cifarlab checkpoint \\(UnpicklingError\\)"):
        load_checkpoint(path)
