"""Every rank of a multi-process run trains the same thing: the ranks compare a hash of their config, their
data and their code before training, and all refuse alike when one differs.

Nodes of a multi-node job are started separately (one `torchrun` per node), so nothing else makes them
agree: a node with an edited recipe, another copy of the data or another cifarlab checkout would otherwise
train its shard with other settings, and DDP would average the gradients of two different runs silently.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch

from cifarlab import _version
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset
from cifarlab.errors import UserError
from cifarlab.runtime import Runtime

PACKAGE = Path(_version.__file__).parent


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """cifarlab's version, torch's, and a hash of every source file of the installed package: two checkouts
    at the same version string but with different edits differ here (a few ms for ~150 files)."""
    digest = hashlib.sha256(f"{_version.__version__} torch {torch.__version__}".encode())
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.yaml")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def identity(cfg: Config, dataset: Dataset) -> dict[str, str]:
    """What every rank must share: {"config": hash, "data": hash, "code": hash}."""
    return {"config": _sha(cfg.to_yaml()), "data": _sha(json.dumps(dataset.fingerprint, sort_keys=True)),
            "code": code_version()}


def check_ranks_agree(cfg: Config, dataset: Dataset, runtime: Runtime) -> None:
    """All ranks refuse (the same UserError, said once by rank 0) when any rank's config, data or code
    differs from rank 0's. One all_gather of three short hashes; nothing for a single process."""
    if not runtime.dist.enabled:
        return
    mine = identity(cfg, dataset)
    everyone: list = [None] * runtime.dist.world_size
    torch.distributed.all_gather_object(everyone, mine)
    for rank, theirs in enumerate(everyone):
        differing = [what for what in mine if theirs[what] != everyone[0][what]]
        if differing:
            # Every rank leaves the group before it refuses: a process that exits inside one aborts (gloo).
            torch.distributed.destroy_process_group()
            raise UserError(f"rank {rank} of {runtime.dist.world_size} has another {' and '.join(differing)} than "
                            f"rank 0 (hash {theirs[differing[0]][:12]} vs {everyone[0][differing[0]][:12]}); start "
                            f"every node with the same command, data and cifarlab checkout")
