"""Output folders, checked before any work: a script that would fail on its first write fails at its start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from udm.errors import UdmError


def check_output_folder(folder: str | Path, need_bytes: int = 1 << 20, key: str = "out_dir") -> Path:
    """The folder, created if needed, after checking that it is a folder udm can write with `need_bytes` free;
    else one UdmError naming `key` (the setting that chose it)."""
    folder = Path(folder).expanduser()
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UdmError(f"{key}={str(folder)!r}: {parent} is a file, not a folder; choose another {key}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".udm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UdmError(f"{key}={str(folder)!r} cannot be written: {e.strerror or e}; choose another {key}") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UdmError(f"{key}={str(folder)!r}: {free / 2**20:.1f} MiB free, and what will be written takes about "
                       f"{need_bytes / 2**20:.1f} MiB; free some space or choose another {key}")
    return folder
