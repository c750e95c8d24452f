"""One run folder, one udm-train: a lock file that a second run on a busy folder is refused by.

A lock whose process is gone (killed with -9, the machine restarted) is stale and taken over. (Hydra writes
the command's config into <run>/.hydra before udm's code runs; udm.callbacks.OutputFolderCheck keeps the
earlier one, which udm.jobs.train puts back when the command is refused.)
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from udm.errors import UdmError

LOCK = ".udm-train.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # a DDP worker runs inside its rank 0's lock


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def run_lock(folder: Path):
    """Hold the folder's lock while the body runs (rank 0 only); refuse, in one message, a folder another live
    udm-train holds."""
    if any(os.environ.get(v, "0") != "0" for v in RANK_VARIABLES):
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path, host = folder / LOCK, socket.gethostname()
    mine = {"pid": os.getpid(), "host": host, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):  # being written this instant, or left half-written: look again
                time.sleep(0.1)
                holder = None
            if holder is None or (holder.get("host") == host and not alive(int(holder.get("pid", -1)))):
                if holder is not None:
                    path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise UdmError(f"the run folder {folder} is in use by udm-train process {holder['pid']} on {holder['host']} "
                           f"(since {holder['since']}); wait for it to finish, stop it, or choose another hydra.run.dir")
    with os.fdopen(fd, "w") as file:
        json.dump(mine, file)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
