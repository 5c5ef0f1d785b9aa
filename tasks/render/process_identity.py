"""Who a process is, across containers and reboots: boot id, pid namespace, pid and start time.

A hostname and a pid do not name a process: two containers may share both (same `--hostname`,
both pid 7 in their own pid namespaces), and a pid is reused after its process exits. Linux gives
four facts that together do:

    boot_id     /proc/sys/kernel/random/boot_id      one kernel, one boot
    pid_ns      inode of /proc/self/ns/pid           one pid namespace of that kernel
    pid         os.getpid()                          one live process of that namespace...
    start_time  /proc/self/stat field 22 (ticks)     ...and which one, if the pid was reused

The job lease (tasks/render/job_lease.py) takes over a lease at once only when `is_dead` can prove
its holder gone: same boot and pid namespace as ours, and no live process with the holder's pid
and start time. Anything else (another host or container, no /proc) waits for the lease to expire.
"""
from __future__ import annotations

import os
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def start_time(pid: int | str = "self") -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot); None when it cannot be read."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 first, so field 22 at index 19
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def current() -> dict[str, Any]:
    """This process: {boot_id, pid_ns, pid, start_time}; a fact /proc does not give is None."""
    try:
        pid_ns: int | None = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pid_ns = None
    return {"boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns, "pid": os.getpid(),
            "start_time": start_time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(other: dict[str, Any] | None) -> bool:
    """True only when `other` (an identity from `current`) provably no longer runs: it ran under this
    kernel boot and in this pid namespace, and its pid is free or now belongs to a process started
    at another time. Any unknown fact (another host, another container, no /proc) gives False."""
    if not other:
        return False
    mine = current()
    if None in (mine["boot_id"], mine["pid_ns"]):
        return False
    if other.get("boot_id") != mine["boot_id"] or other.get("pid_ns") != mine["pid_ns"]:
        return False
    pid, started = other.get("pid"), other.get("start_time")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(started, int):
        return False
    if not _alive(pid):
        return True
    now_started = start_time(pid)
    return now_started is not None and now_started != started  # the pid was reused: its holder is gone
