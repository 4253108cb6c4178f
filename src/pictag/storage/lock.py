"""One writer per output: a POSIX record lock on local folders, a renewed lease on object storage; and `waiting`,
a local lock that makes a second writer wait for the first (a shared cache)."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pictag.errors import PictagError
from pictag.storage.files import delete, makedirs, writing

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

LOCK_FILE = ".lock"
# Object storage has no flock: the lock there is a lease that its holder renews while it commits; one older than
# this is taken to be left by a dead driver. Long enough for a slow model between commits, short enough to resume.
LEASE_S = 120.0
# The lock files this process holds (real path: descriptor); see `FolderLock.take`.
_HELD: dict[str, int] = {}


class FolderLock:
    """The lock of one folder, kept in its `LOCK_FILE`.

    Args:
        fs: The folder's fsspec filesystem, or None for a local folder.
        root: The folder's path (on `fs`).
        location: The folder as the user named it (a path or URL), for messages.
        shown: How a local folder is named in messages.
    """

    def __init__(self, fs: AbstractFileSystem | None, root: str, location: str, shown: Path | str):
        self.fs, self.root, self.location, self.shown = fs, root, location, shown
        self.path = f"{root.rstrip('/')}/{LOCK_FILE}"
        self._held: str | None = None
        self._lease: float | None = None

    def take(self) -> None:
        """Keep other runs off the folder until the process ends (a second one is refused at once).

        Locally this is a POSIX record lock (`lockf`), which belongs to this process alone: unlike `flock`, the
        DataLoader workers it forks do not inherit it, so a run killed with -9 frees its output at once, even while
        its orphaned workers live on, and `--resume` right after is accepted. The kernel releases it however the
        process ends. On object storage it is a lease file naming its holder, renewed by `renew`; a lease older
        than `LEASE_S` is taken over.

        Raises:
            PictagError: another live process (or this one, through another lock of the folder) holds it, or the
                folder cannot be written.
        """
        with writing(self.location):
            makedirs(self.fs, self.root)
            if self.fs is not None:
                return self._take_lease()
            path = os.path.realpath(self.path)
            # A process's POSIX locks never conflict with each other, and closing any descriptor of the file drops
            # them: a second lock in this process is refused here, before the file is opened again.
            if path in _HELD:
                raise PictagError(f"{self.shown} is being written by pid {os.getpid()} (this process)")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise PictagError(
                f"{self.shown} is being written by {holder}: wait for it, or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        _HELD[path] = fd
        self._held = path  # released by `release`, or by the kernel when this process ends, however it ends

    def _take_lease(self) -> None:
        # Not atomic (fsspec has no portable conditional create): two drivers starting in the same second can
        # both get it. docs/scale-out.md says so; parts stay exactly-once regardless, by their names.
        if self.fs.exists(self.path):
            text = self.fs.cat_file(self.path).decode(errors="replace")
            holder, _, stamp = text.rpartition(" at ")
            try:
                age = time.time() - float(stamp)
            except ValueError:
                age = LEASE_S
            if age < LEASE_S:
                raise PictagError(
                    f"{self.location} is being written by {holder or 'another driver'} (lease renewed {age:.0f} s "
                    f"ago): wait for it, or, if it died, retry after {LEASE_S - age:.0f} s"
                )
        self._lease = 0.0
        self.renew()

    def renew(self) -> None:
        """Renew the lease on object storage (at most every third of `LEASE_S`); nothing locally."""
        if self.fs is None or self._lease is None or time.time() - self._lease < LEASE_S / 3:
            return
        self._lease = time.time()
        text = f"pid {os.getpid()} on {socket.gethostname()} at {self._lease}"
        with writing(self.location):
            self.fs.pipe_file(self.path, text.encode())

    def release(self) -> None:
        """Let other runs write the folder again (nothing if this lock was not taken)."""
        if self._held is not None:
            os.close(_HELD.pop(self._held))
            self._held = None
        if self._lease is not None:
            self._lease = None
            delete(self.fs, self.path)  # gone already when the folder was removed after a merge


@contextmanager
def waiting(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of the local file `path` while the block runs, waiting while another process holds it.

    For a cache shared by processes: the second writer waits for the first, then finds its entry, rather than
    building it again. The file is created if missing and left in place (removing it would let a third process lock
    a new file while the second still holds the old one).
    """
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
