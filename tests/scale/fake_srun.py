"""A stand-in for ``srun`` inside an allocation: starts SLURM_NNODES x SLURM_NTASKS_PER_NODE local tasks.

Each task gets the variables real srun sets for it (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS);
srun options before the command are ignored. Exits with the first non-zero task status, like
``--kill-on-bad-exit``.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    command = list(argv)
    while command and command[0].startswith("-"):
        command.pop(0)
    nodes, per_node = int(os.environ["SLURM_NNODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
    tasks = []
    for node in range(nodes):
        for local in range(per_node):
            env = dict(
                os.environ,
                SLURM_NTASKS=str(nodes * per_node),
                SLURM_PROCID=str(node * per_node + local),
                SLURM_LOCALID=str(local),
                SLURM_NODEID=str(node),
            )
            tasks.append(subprocess.Popen(command, env=env))
    codes = [task.wait() for task in tasks]
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
