"""Work claims: which images each live writer of a feature-cache folder is encoding right now.

Several processes (torchrun ranks, two users' commands, machines sharing the folder) may fill
one cache folder at once. Before encoding a group of images a writer claims it; a writer
passes over images another live writer has claimed, and waits for them at the end instead.

- Each writer holds an exclusive ``flock`` on ``claims/<writer>.lock`` for as long as it runs;
  the kernel releases it when the process ends, however it ends (crash, kill -9).
- It lists the image hashes it is encoding in ``claims/<writer>.claims`` (20 bytes each,
  replaced atomically).
- Claims are read and changed under an exclusive ``flock`` on ``claims/.lock``. A claims file
  whose writer lock can be taken belongs to a dead writer: it is removed and its images are free.

The shards themselves need no lock: each is written to a temporary file and renamed into place
under a name derived from its content, and the index is the set of shards in the folder. Locks
work between processes of one machine and, on file systems with working ``flock`` (local disks,
NFSv4, Lustre with ``-o flock``), between machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path

from ..errors import GeoscopeError, quote_name
from ..fileio import atomic_write_bytes

HASH_BYTES = 20


class WorkClaims:
    """This process's claims in one cache folder (a context manager: the claims end with it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / "claims"
        self.folder.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())[:40] or "host"
        self.name = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.mine: set[bytes] = set()
        self._fd = os.open(self.folder / f"{self.name}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        _lock(self._fd, self.folder)  # held while this writer lives

    def __enter__(self) -> WorkClaims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def claim(self, candidates: Sequence[bytes], done: Callable[[], Container[bytes]], limit: int) -> list[bytes]:
        """Claim up to ``limit`` of ``candidates`` that no live writer claims and that ``done()`` does not hold.

        ``done`` is called after the other writers' claims are read, so an image another writer
        finished and released is seen as done, never as free.
        """
        with self._locked():
            taken = self._others()
            finished = done()
            picked = []
            for digest in candidates:
                if digest not in taken and digest not in finished and digest not in self.mine:
                    picked.append(digest)
                    if len(picked) >= limit:
                        break
            if picked:
                self.mine.update(picked)
                self._write()
        return picked

    def release(self, digests: Sequence[bytes]) -> None:
        """These images are stored (or given up): drop their claims."""
        with self._locked():
            self.mine.difference_update(digests)
            self._write()

    def close(self) -> None:
        """Drop every claim and this writer's lock."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError), self._locked():
            (self.folder / f"{self.name}.claims").unlink(missing_ok=True)
            (self.folder / f"{self.name}.lock").unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1

    def _write(self) -> None:
        atomic_write_bytes(self.folder / f"{self.name}.claims", b"".join(sorted(self.mine)))

    def _others(self) -> set[bytes]:
        """Images claimed by other live writers; the claims of dead writers are removed."""
        taken: set[bytes] = set()
        for claims in self.folder.glob("*.claims"):
            if claims.stem == self.name:
                continue
            if _alive(claims.with_suffix(".lock")):
                with contextlib.suppress(FileNotFoundError):
                    data = claims.read_bytes()
                    taken.update(data[i:i + HASH_BYTES] for i in range(0, len(data), HASH_BYTES))
            else:
                claims.unlink(missing_ok=True)
                claims.with_suffix(".lock").unlink(missing_ok=True)
        return taken

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            _lock(fd, self.folder)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _lock(fd: int, folder: Path) -> None:
    """An exclusive ``flock``, or one line naming the cache folder whose file system cannot lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise GeoscopeError(f"cannot lock files in the feature cache {quote_name(folder.parent)} "
                            f"({exc.strerror or exc}): put GEOSCOPE_CACHE on a file system with file locks") from None


def _alive(lock: Path) -> bool:
    """Whether a writer holds ``lock`` (taking it, if nobody does, proves its writer gone)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
