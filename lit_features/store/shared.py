"""Every rank of a job must see the same store: a check across ranks that the output folder is shared."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lit_features.errors import UserError
from lit_features.store import layout


class StoreNotSharedError(UserError, RuntimeError):
    """Some ranks do not see the store rank 0 prepared: the output directory is not shared by all nodes."""


def check_shared_store(trainer: pl.Trainer, root: Path, wait_s: float = 30.0, marker: Path | None = None) -> None:
    """Fail on every rank unless every rank sees the same ``root`` as rank 0 (a collective; no-op on one rank).

    Ranks on other nodes resume from, and append to, the index files they see: with a node-local output
    directory they would disagree about what is done and split the work differently (samples done twice or
    never). Rank 0 writes a fresh token into ``root``; the others wait up to ``wait_s`` for it to show up (a
    network filesystem may show a new file late), then all ranks compare notes.
    """
    if trainer.world_size <= 1:
        return
    marker = marker if marker is not None else root / layout.RUN_TOKEN  # one per job where jobs run together
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}" if trainer.global_rank == 0 else None
    if token is not None:
        layout.atomic_write_text(marker, token)
    token = trainer.strategy.broadcast(token, 0)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sees = marker.read_text() == token
        except OSError:
            sees = False
        if sees or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = trainer.strategy.reduce(
        torch.tensor(0.0 if sees else 1.0, device=trainer.strategy.root_device), reduce_op="sum"
    )
    if float(missing) > 0:
        here = "sees it" if sees else "does not see it"
        raise StoreNotSharedError(
            f"{int(missing)} of {trainer.world_size} ranks do not see the feature store rank 0 prepared at {root} "
            f"(rank {trainer.global_rank} on {socket.gethostname()} {here}). --writer.output_dir must be one folder "
            "shared by every node (NFS, Lustre, GPFS, ...) at the same path."
        )
