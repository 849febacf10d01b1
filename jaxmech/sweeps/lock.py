"""One writer per run folder: ``<run>/.lock``, held by the sweep (its process 0) from before it reads
``meta.json`` until it ends.

The lock is an advisory ``flock`` on the file, which the kernel releases when its holder dies however it dies
(a lock left by a killed process on this host is taken over at once, as the lock of a dead process). The
file says who holds it (host, pid, start time) for the refusal message. Several hosts writing one run
coordinate through process 0, the only one that takes the lock. On a file system without locks (some network
and FUSE mounts) the sweep goes on unlocked and says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another sweep is writing the run folder; the message names its host and pid."""


class RunLock:
    """The lock of one run folder (`acquire`, then `release`; also a context manager).

    Args:
        folder: The run folder (created if absent, which is the first thing a sweep writes).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.locked = False

    def acquire(self, log=None) -> RunLock:
        """Takes the lock.

        Raises:
            RunLockedError: If another process holds it (naming it).
            OSError: If the folder cannot be created or written (naming it).
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"--out {self.folder}: cannot create the run folder ({err.strerror})") from None
        for _ in range(10):  # retried only while other processes remove the file under us
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OSError(f"--out {self.folder}: cannot write in the run folder ({err.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.folder} is being written by another sweep ({_describe(holder)}); wait for it to end or "
                    "choose another --out (one sweep writes a run folder at a time)"
                ) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                if log:
                    log(f"sweep: {self.folder}: the file system has no locks; make sure no other sweep writes here")
                self._fd = fd
                return self
            # The file may have been removed (released) between open and flock: lock the one at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd, self.locked = fd, True
                previous = _read(fd)
                if previous and log:  # its holder ended without releasing it (killed): the kernel freed the flock
                    log(f"sweep: {self.folder}: taking over the lock left by a sweep that has ended "
                        f"({_describe(previous)})")
                _write(fd, {"host": socket.gethostname(), "pid": os.getpid(),
                            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                return self
            os.close(fd)
        raise RunLockedError(f"{self.folder}: could not take its lock {self.path} (other processes keep replacing it)")

    def release(self) -> None:
        """Removes the file and releases the lock (idempotent)."""
        if self._fd is None:
            return
        if self.locked:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)  # closing releases the flock
        self._fd, self.locked = None, False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _write(fd: int, holder: dict) -> None:
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has just started"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"
