"""Helper processes die with the process that owns them.

A SIGKILL (OOM killer, ``kubectl delete --grace-period=0``) or the immediate exit on a second
signal gives the parent no chance to stop its forkserver and imaging workers; they would live on
holding memory and CPU. On Linux each helper asks the kernel for SIGKILL when its parent goes
(``prctl(PR_SET_PDEATHSIG)``): the forkserver when the fetcher process dies, each worker when the
forkserver dies; the resource tracker then sees its pipe close and exits by itself. Every helper
carries the owner's pid in its environment (``FETCHER_OWNER_PID``), which closes the race of an
owner that died before the request was made, and lets tests find a run's processes in /proc.

The kernel sends the signal when the parent *thread* exits: pools must be started from a thread
that lives as long as they do (the event loop's), as ImagingPool is.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

OWNER_ENV = "FETCHER_OWNER_PID"
_PR_SET_PDEATHSIG = 1


def mark_owner() -> None:
    """Record this process as the owner of the helpers it is about to start (they inherit the mark)."""
    os.environ[OWNER_ENV] = str(os.getpid())


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> bool:
    """Ask for ``sig`` when this process's parent exits; exit now if the owner is already gone.

    Returns False where the kernel offers no such request (not Linux); the helper then lives until
    its own queue closes, as before.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError) as exc:
        logger.warning("prctl unavailable: %s", exc)
        return False
    owner = os.environ.get(OWNER_ENV, "")
    if owner.isdigit() and not _alive(int(owner)):
        os._exit(1)  # the owner died between our fork and the request: nobody would kill us
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
