"""Atomic writes and output-folder locks.

Every result is written to a temporary file in the destination folder, flushed,
fsynced and renamed over the final name, so a reader (or a resumed run) sees either
the old file or the complete new one, never half of it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io as _io
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from deepadversaries.errors import file_error
from deepadversaries.formatting import nan_to_none

TMP_MARK = ".tmp-"
LOCK_NAME = ".deepadv.lock"
#: fault-injection hooks for the reliability tests (tests/reliability): a process with
#: DEEPADV_FAULT_AFTER=n SIGKILLs itself right after its n-th atomic write is renamed into
#: place; with DEEPADV_FAULT_DURING=n, after the n-th temporary file is written but before
#: it is renamed. Writes are counted per process from 1. The value may also be a file name
#: (the first atomic write of a file of that name) or NAME#k (its k-th write). With
#: DEEPADV_FAULT_ONCE=path as well, a fault by name fires at any write of that name, but only
#: while ``path`` does not exist, and creates it first: one death among many processes (a
#: Dask worker killed mid-task, then restarted with the same environment). Unset, the hooks
#: do nothing.
FAULT_AFTER_ENV = "DEEPADV_FAULT_AFTER"
FAULT_DURING_ENV = "DEEPADV_FAULT_DURING"
FAULT_ONCE_ENV = "DEEPADV_FAULT_ONCE"
_atomic_writes = 0
_writes_by_name: dict[str, int] = {}
#: an empty lock file younger than this is being created by a starting process (not stale)
STARTING_LOCK_S = 5.0


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


def _fault_point(env: str, count: int, name: str, nth_of_name: int) -> None:
    """Kill this process with SIGKILL if ``env`` names the current atomic write (test hook)."""
    value = os.environ.get(env, "").strip()
    if not value:
        return
    target, _, k = value.partition("#")
    once = os.environ.get(FAULT_ONCE_ENV, "").strip()
    if once and not value.isdigit():
        if target != name:
            return
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # the first process wins
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
    if (value == str(count)) if value.isdigit() else (target == name and (int(k) if k else 1) == nth_of_name):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success."""
    global _atomic_writes
    _atomic_writes += 1
    count = _atomic_writes
    path = Path(path)
    nth_of_name = _writes_by_name[path.name] = _writes_by_name.get(path.name, 0) + 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    except OSError as exc:
        _raise_write_error(path, exc)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results get the usual rw-r--r-- (umask)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fault_point(FAULT_DURING_ENV, count, path.name, nth_of_name)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fault_point(FAULT_AFTER_ENV, count, path.name, nth_of_name)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        _raise_write_error(path, exc)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _raise_write_error(path: Path, exc: OSError) -> NoReturn:
    """A full disk or a forbidden folder is the user's to fix: raise a one-line DeepAdvError; else ``exc``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise file_error(path, "no space left on device; free some space and run again") from exc
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        raise file_error(path, f"cannot write ({exc.strerror})") from exc
    raise exc


#: bytes read at a time when hashing a file
HASH_BLOCK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN and ±inf become ``null``), atomically."""
    write_text(path, json.dumps(nan_to_none(obj), indent=2, sort_keys=False, default=_json_default,
                                allow_nan=False) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Save one array in ``.npy`` format, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save several arrays in an uncompressed ``.npz``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """Write dict rows as CSV with a header, atomically."""
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in fieldnames})
    write_text(path, buf.getvalue())


def _csv_value(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.generic):
        return v.item()
    return v


def append_json_line(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to a progress log with a single ``write``, then ``fsync``.

    A crash can leave at most a torn last line, which :func:`read_progress_log` drops.

    Raises:
        FileError: the disk is full ("no space left on device") or the folder cannot be written.
    """
    path = Path(path)
    data = (json.dumps(record) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, data) != len(data):  # a short write: the disk filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise file_error(path, "no space left on device; free some space and run again") from exc
        raise file_error(path, f"cannot write ({exc.strerror})") from exc


def read_progress_log(path: str | Path, settings: Mapping[str, Any],
                      what: str = "campaign") -> tuple[dict[int, dict], float, int]:
    """Resume a per-image progress log (JSON lines: a settings header, then one record per image).

    A missing or header-less log is started afresh with ``settings`` as its header; a torn last
    line (a crash mid-write) is cut off the file.

    Args:
        path: the ``progress.jsonl`` file.
        settings: the settings the records must have been made with.
        what: the noun for the error message ("campaign", "certification") [default: "campaign"].

    Returns:
        (records by ``test_index``, earlier sessions' summed wall time in s, number of earlier sessions).

    Raises:
        FileError: the log was started with other settings.
    """
    path = Path(path)
    if not path.is_file():
        append_json_line(path, {"settings": dict(settings), "version": 1})
        return {}, 0.0, 0
    raw = path.read_bytes()
    records: dict[int, dict] = {}
    elapsed: dict[int, float] = {}  # per earlier session: time to its last finished image
    good = 0  # bytes of complete, parseable lines
    for i, line in enumerate(raw.split(b"\n")[:-1]):  # the last element follows the final newline
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if i == 0:
            if rec.get("settings") != settings:
                raise file_error(path, f"holds an unfinished {what} with other settings; run again with the "
                                       "same options to resume it, or add --overwrite to start afresh")
        else:
            records[int(rec["test_index"])] = rec
            session = int(rec.get("session", 0))
            elapsed[session] = max(elapsed.get(session, 0.0), float(rec.get("elapsed_s", 0.0)))
        good += len(line) + 1
    if good == 0:  # not even a header: start again
        path.unlink()
        return read_progress_log(path, settings, what)
    if good < len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return records, float(sum(elapsed.values())), (max(elapsed) + 1 if elapsed else 0)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a one-line error naming the file if it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise file_error(path, "file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise file_error(path, f"not valid JSON ({exc})") from exc


def remove_temporaries(folder: str | Path) -> int:
    """Delete temporary files left by an interrupted atomic write; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def remove_stale_locks(folder: str | Path) -> int:
    """Delete lock files under ``folder`` whose owner process is dead (left by a killed run)."""
    folder = Path(folder)
    n = 0
    for p in folder.rglob(LOCK_NAME) if folder.is_dir() else ():
        owner = _lock_owner(p)
        if owner is None:
            continue
        pid, starting = owner
        if (pid and _pid_alive(pid)) or starting:
            continue
        p.unlink(missing_ok=True)
        n += 1
    return n


def _lock_owner(path: Path) -> tuple[int, bool] | None:
    """(PID written in a lock file or 0, whether it is an empty lock still being created); None if unreadable."""
    try:
        text = path.read_text().strip()
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    return (int(text) if text.isdigit() else 0), (not text and age < STARTING_LOCK_S)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder, held by one process at a time.

    The lock file holds the owner's PID; a lock whose owner is dead is taken over,
    so a killed run never leaves a folder stuck.
    """

    def __init__(self, folder: str | Path, what: str = "deepadv") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._held = False

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error(self.folder, f"cannot create output folder ({exc.strerror})") from exc
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, starting = _lock_owner(self.path) or (0, False)
                if starting:  # just created; its owner is writing its pid
                    raise file_error(self.folder, "in use by another deepadv process (starting up); "
                                       "wait for it to finish or choose another output folder")
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise file_error(
                        self.folder, f"in use by another deepadv process (pid {pid}); "
                        "wait for it to finish or choose another output folder"
                    )
                self.path.unlink(missing_ok=True)  # stale lock of a dead process
                continue
            except OSError as exc:
                raise file_error(self.folder, f"cannot write ({exc.strerror})") from exc
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(str(os.getpid()))
            except OSError as exc:  # e.g. a full disk: do not leave an empty lock behind
                self.path.unlink(missing_ok=True)
                _raise_write_error(self.path, exc)
            self._held = True
            return
        raise file_error(self.folder, "could not take the output lock")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
