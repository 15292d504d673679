"""One writer per output directory, and one creator per SQLite MLflow store.

``OutputLock`` holds an exclusive ``fcntl.flock`` on ``<out>/.pipeline.lock`` for the life of
a driver (``run``, ``search``, ``sync``). The kernel drops a flock when its holder dies, however
it dies, so a lock is never left held by a dead process: staleness needs no guessing. The file
also holds a JSON record of the holder (host, pid, command, since when), read by whoever is
refused, and cleared on a clean release; a record still there when the lock is free names a
holder that died, whose lock is taken over with a notice.

Holding the lock, nobody else writes the directory, so the hidden temporary files of a killed
write (``records.tables.atomic_write``'s ``.<name>.<pid>.tmp``) are removed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

from .errors import LockHeld

LOCK_NAME = ".pipeline.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def describe(holder: dict) -> str:
    return (f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


def tmp_leftovers(out: Path) -> list[Path]:
    """Hidden temporaries of interrupted atomic writes, in ``out`` and its table folders."""
    found = []
    for d in (out, *(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("_"))):
        found += [f for f in d.glob(".*.tmp") if f.is_file()]
    return sorted(found)


class OutputLock:
    """``with OutputLock(out, "run", wait=None):`` refuses at once (``LockHeld``) when another
    process holds ``out``; ``wait`` seconds (``math.inf``: as long as it takes) queue behind it."""

    def __init__(self, out: str | Path, command: str = "run", wait: float | None = None, poll_s: float = 0.5,
                 stream=None):
        self.out, self.command, self.wait, self.poll_s = Path(out), command, wait, poll_s
        self.path = self.out / LOCK_NAME
        self.stream = stream or sys.stderr
        self.removed: list[Path] = []  # dot-tmp leftovers removed at acquisition
        self.took_over: dict | None = None  # the dead holder's record, when its lock was taken over
        self._fd: int | None = None

    def _read(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:  # a holder killed mid-write of its record
            return {"command": "?", "note": "unreadable record"}

    def acquire(self) -> "OutputLock":
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + (self.wait if self.wait is not None else 0.0)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._read(fd)
                if self.wait is None or time.monotonic() >= deadline:
                    os.close(fd)
                    waited = "" if self.wait is None else f" (waited {self.wait:g} s)"
                    raise LockHeld(f"output: {self.out} is in use by {describe(holder)}{waited}; let it finish, "
                                   f"or pass --wait to start when it does, or choose another --out") from None
                if not announced:
                    limit = "" if math.isinf(self.wait) else f" (at most {self.wait:g} s)"
                    print(f"waiting for {describe(holder)} to release {self.out}{limit}", file=self.stream,
                          flush=True)
                    announced = True
                time.sleep(self.poll_s)
        self._fd = fd
        previous = self._read(fd)
        if previous:
            self.took_over = previous
            gone = (previous.get("host") == socket.gethostname() and isinstance(previous.get("pid"), int)
                    and not pid_alive(previous["pid"]))
            why = "that process is gone" if gone else "it no longer holds the lock"
            print(f"notice: taking over the lock of {self.out} from {describe(previous)}: {why}", file=self.stream,
                  flush=True)
        record = dict(command=self.command, pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%FT%T%z"),
                      argv=" ".join(sys.argv)[:500])
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._remove_tmp()
        return self

    def _remove_tmp(self) -> None:
        for f in tmp_leftovers(self.out):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                self.removed.append(f)
        if self.removed:
            print(f"notice: removed {len(self.removed)} temporary file(s) of an interrupted write in {self.out} "
                  f"(e.g. {self.removed[0].name})", file=self.stream, flush=True)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a clean release leaves no record: a record means a dead holder
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def creation_lock_path(db: Path) -> Path:
    """The lock file beside an SQLite store (left there: ``.gitignore`` ignores it)."""
    return db.parent / f".{db.name}.create.lock"


@contextlib.contextmanager
def store_creation_lock(uri: str):
    """Serialise opening a ``sqlite:///`` MLflow store across processes: two drivers creating a
    new database a second apart race in its schema creation (an OperationalError). Other URIs:
    nothing to do (the server serialises)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(creation_lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for the seconds of a schema creation at most
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
