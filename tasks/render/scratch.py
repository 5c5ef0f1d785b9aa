"""Local scratch folders of one process, swept once their process is gone.

The plan and out-of-core index work keep their files in a temp folder that a clean exit removes; a
killed process (kill -9, OOM) leaves it behind. Each folder's name carries its process's identity
(tasks/render/process_identity.py: boot id, pid namespace, pid, start time), so a later process
on the same machine removes the folders whose process provably no longer runs, and nothing else.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import process_identity


def _tag(identity: dict) -> str:
    boot = (identity["boot_id"] or "").replace("-", "")
    return f"{boot or 'x'}-{identity['pid_ns'] or 0}-{identity['pid']}-{identity['start_time'] or 0}-"


def _identity(tag: str) -> dict | None:
    parts = tag.split("-")
    if len(parts) < 5 or not all(p.isdigit() for p in parts[1:4]) or len(parts[0]) != 32:
        return None  # not named by scratch_dir: left alone
    b = parts[0]
    return {"boot_id": f"{b[:8]}-{b[8:12]}-{b[12:16]}-{b[16:20]}-{b[20:]}", "pid_ns": int(parts[1]),
            "pid": int(parts[2]), "start_time": int(parts[3])}


def sweep(prefix: str, root: str | None = None) -> list[str]:
    """Remove the `<root>/<prefix>*` folders whose process is gone; returns their paths."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        if process_identity.is_dead(_identity(folder.name[len(prefix):])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def scratch_dir(prefix: str, root: str | None = None) -> str:
    """A new private folder `<root>/<prefix>...` for this process, after sweeping dead ones."""
    sweep(prefix, root)
    return tempfile.mkdtemp(prefix=prefix + _tag(process_identity.current()), dir=root)
