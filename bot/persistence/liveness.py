"""Is the process that ran a run still alive? (host, pid and the pid's start time.)

A run whose row says ``running`` may belong to a live process (another mmbot on the same
database) or to one that was killed (SIGKILL, power loss) before it could end the run. On
the same host the answer is certain: the pid is gone, or it now belongs to a process that
started at another time (pid reuse). For a run of another host (a database on a shared
disk) only the heartbeat can tell: it is dead when its heartbeat is older than
``stale_after_s``.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return socket.gethostname()


def _stat(pid: int) -> list[str]:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first); [] when unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return []
    # the command name (field 2) is in parentheses and may contain spaces
    return stat[stat.rfind(")") + 2:].split()


def process_start(pid: int) -> str:
    """The OS start time of ``pid`` as an opaque token ('' when unknown or not on Linux)."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""  # field 22 of the whole line


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    fields = _stat(pid)
    return not (fields and fields[0] in ("Z", "X"))  # a zombie is dead, just not yet reaped


def process_alive(host: str, pid: int, proc_start: str, heartbeat_ns: int, now_ns: int, stale_after_s: float) -> bool:
    """True when the process that wrote this liveness record may still be running."""
    if host == hostname():
        if not pid_alive(pid):
            return False
        if proc_start:
            now_start = process_start(pid)
            if now_start and now_start != proc_start:
                return False  # the pid was reused by another process
        return True
    return (now_ns - heartbeat_ns) < stale_after_s * 1e9
