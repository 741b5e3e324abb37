"""One run per workdir: :class:`WorkdirLock`, held by ``python -m tmspr_jax.main`` for the whole run.

Two runs in one workdir would interleave ``metrics.jsonl``, write two TensorBoard files and overwrite each other's
checkpoints; the second is refused in one line naming the first (docs/faults.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from absl import logging


class WorkdirBusy(ValueError):
    """Another run holds the workdir (the message names it)."""


class WorkdirLock:
    """One run per workdir: ``WORKDIR/.lock``, created with ``O_EXCL`` (atomic on local and NFS v3+ file systems)
    and holding the holder's host, pid, process start time, start date and command; removed when the run ends
    (normally, by an exception or by SIGTERM).

    A lock left by a run that died without removing it (``kill -9``, a crash, a lost machine) is stale and taken over
    with a warning: on the same host when its pid is gone or belongs to a newer process; from another host when the
    holder has not touched the file for :attr:`STALE_S` seconds (the holder touches it every :attr:`HEARTBEAT_S`
    seconds from a thread). Anything else is a :class:`WorkdirBusy` line naming the holder.
    """

    FILE = ".lock"
    HEARTBEAT_S = 30.0
    STALE_S = 300.0

    def __init__(self, workdir: str, flag: str = "--workdir", unwind_on_sigterm: bool = True):
        """``unwind_on_sigterm``: until the trainer installs its own, a SIGTERM handler that unwinds the process so
        that the lock is removed. Off in a multi-process job, where JAX's coordination service catches SIGTERM (for
        the processes' preemption sync point) and a Python handler would take the signal from it."""
        self.workdir = workdir
        self.flag = flag
        self.unwind_on_sigterm = unwind_on_sigterm
        self.path = os.path.join(workdir, self.FILE)
        self._mine: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_sigterm: Any = None

    # ------------------------------------------------------------------ holding
    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`WorkdirBusy` naming the run that holds it."""
        mine = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(sys.argv),
        }
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, age = _read_lock(self.path)
                if age < 0:  # removed meanwhile: try again
                    continue
                reason = self._stale_reason(holder, age)
                if reason is None:
                    raise WorkdirBusy(self._busy_message(holder)) from None
                self._take_over(holder, reason)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            self._mine = mine
            self._start_heartbeat()
            return
        raise WorkdirBusy(f"{self.flag}={self.workdir}: could not take {self.path} (other runs keep taking it).")

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if self._mine is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        holder, _ = _read_lock(self.path)
        if holder == self._mine:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._mine = None

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="workdir-lock", daemon=True)
        self._thread.start()
        # SIGTERM before the trainer installs its own handler (reading data, compiling) would end the process
        # without unwinding: make it unwind, so that the lock is removed.
        if self.unwind_on_sigterm and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)

    # ------------------------------------------------------------------ stale locks
    def _stale_reason(self, holder: dict | None, age: float) -> str | None:
        """Why the lock in place is stale, or None when its holder may be running."""
        if holder is None:  # empty or cut short: its writer died between creating and writing it
            return f"unreadable and untouched for {age:.0f} s" if age > self.STALE_S else None
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            if not _pid_alive(pid):
                return f"its process {pid} is gone"
            start = holder.get("process_start")
            if start is not None and _process_start(pid) not in (None, start):
                return f"process {pid} is now another program"
            return None
        if age > self.STALE_S:
            return f"its host has not touched it for {age:.0f} s (a live run touches it every {self.HEARTBEAT_S:g} s)"
        return None

    def _take_over(self, holder: dict | None, reason: str) -> None:
        # Rename first (atomic): of two runs taking over the same stale lock, only one moves it; the other finds
        # either no file or the winner's fresh lock, which it gives back.
        aside = f"{self.path}.stale.{socket.gethostname()}.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved, _ = _read_lock(aside)
        if moved != holder:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)  # the winner's lock back in place (link: never over another)
            os.unlink(aside)
            return
        os.unlink(aside)
        logging.warning("%s: stale lock of %s taken over (%s).", self.path, _describe(holder), reason)

    def _busy_message(self, holder: dict | None) -> str:
        return (
            f"{self.flag}={self.workdir} is in use by {_describe(holder)}: one run per workdir. Wait for it, stop "
            f"it, or choose another {self.flag} (if that run is gone, delete {self.path})."
        )


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "a run starting now (its lock file is being written)"
    command = " ".join(str(holder.get("command", "")).split())[:200]
    return f"pid {holder.get('pid')} on host {holder.get('host')} started {holder.get('started')}" + (
        f" ({command})" if command else ""
    )


def _read_lock(path: str) -> tuple[dict | None, float]:
    """The lock's holder (None when unreadable) and the seconds since it was last touched (-1: no lock)."""
    try:
        age = time.time() - os.stat(path).st_mtime
        with open(path) as f:
            holder = json.load(f)
        return (holder if isinstance(holder, dict) else None), age
    except FileNotFoundError:
        return None, -1.0
    except (OSError, ValueError):
        return None, age


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _process_start(pid: int) -> str | None:
    """The process's start time since boot (Linux ``/proc``), which tells a reused pid apart; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
