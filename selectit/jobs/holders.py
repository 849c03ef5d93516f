"""Who holds a job: a worker id is `host:pid`, so a process on the same host can tell that a
holder is gone without waiting for its lease to expire (`selectit status` calls such a job
*stalled*; the fleet takes it back).

    >>> dead_local_workers(["elsewhere:1", None])  # another host: only its lease can tell
    []
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def dead_local_workers(workers: Iterable[str | None]) -> list[str]:
    """The `host:pid` ids among `workers` that ran on this host and whose process is gone."""
    host = socket.gethostname()
    dead = []
    for w in workers:
        if not w or ":" not in w:
            continue
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit() and not pid_alive(int(pid)):
            dead.append(w)
    return dead
