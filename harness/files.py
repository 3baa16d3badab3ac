"""Atomic file writes that leave no debris, and errors that name the file.

:func:`atomic_write` runs ``write(tmp)`` on a fresh temporary, fsyncs it and renames it over the
target (``os.replace``): readers see the old file or the new one, never a mix.

Where temporaries live. In a hidden folder ``.partial`` inside the target's folder (the same file
system, so the rename stays atomic), named ``<target name>.<host>.<pid>.<random>.tmp``: a reader
listing or globbing the folder for results (``*.json``, ``*.safetensors``) never sees one. The
folder is removed again as soon as it is empty.

Debris. A failed write removes its temporary; a killed one cannot. So every write first removes
the stale temporaries of the same target: those whose writer (host and process id in the name)
is no longer running on this host, and those older than :data:`STALE_AFTER` seconds (another
host's, or of the older ``.<name>.<hex>.tmp`` form that used to sit beside the target). A
temporary of a writer still running is left alone.

Errors. Any OSError (a folder that is a file, a target that is a directory, a full disk) is
re-raised as the same OSError subclass whose message starts ``cannot write <target>:``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from harness.checks import check_type

__all__ = ["atomic_write", "atomic_write_text", "check_target", "clean_stale_temporaries", "discard", "scratch_file", "temporaries", "TMP_DIR",
           "STALE_AFTER"]

TMP_DIR = ".partial"
STALE_AFTER = 3600.0
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_ATTEMPTS = 5  # another writer may remove the empty .partial folder between our mkdir and open


def _cannot(path: Path, exc: OSError, reason: str | None = None) -> OSError:
    message = f"cannot write {path}: {reason or exc.strerror or exc}"
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


def check_target(path: str | os.PathLike, *, make_parents: bool = True) -> None:
    """Raise the OSError that writing ``path`` would meet in its folders (one naming it), before any work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path}: it is a directory; give a file path inside it")
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"cannot write {path}: {folder} is a file, not a folder")
            _probe(folder, path)
            break
        if not make_parents:
            raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: its folder {path.parent} does not exist")


def _probe(folder: Path, path: Path) -> None:
    """Create and remove a file in ``folder``: permissions alone miss read-only mounts and /proc."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".harness-probe-"):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write {path}: {folder} does not take new files "
                                   f"({exc.strerror})") from None


def temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` on disk: in ``.partial`` and in the older form beside it."""
    path = Path(path)
    ours = re.compile(rf"{re.escape(path.name)}\.[0-9a-f]{{8}}\.\d+\.[0-9a-f]{{8}}\.tmp")
    older = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.tmp")
    found = []
    for folder, pattern in ((path.parent / TMP_DIR, ours), (path.parent, older)):
        try:
            found += [p for p in folder.iterdir() if pattern.fullmatch(p.name)]
        except OSError:  # no such folder (yet)
            continue
    return sorted(found)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _stale(tmp: Path, now: float) -> bool:
    parts = tmp.name.rsplit(".", 4)
    if tmp.parent.name == TMP_DIR and len(parts) == 5 and parts[1] == _HOST and not _running(int(parts[2])):
        return True
    try:
        return now - tmp.stat().st_mtime > STALE_AFTER
    except OSError:
        return False


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the stale temporaries of ``path`` (see the module docstring); return those removed."""
    now, removed = time.time(), []
    for tmp in temporaries(path):
        if _stale(tmp, now):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:  # gone already, or not ours to remove: nothing depends on it
                pass
    _remove_if_empty(Path(path).parent / TMP_DIR)
    return removed


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (another write in progress) or already gone
        pass


def _new_temporary(path: Path) -> Path:
    folder = path.parent / TMP_DIR
    for _ in range(_ATTEMPTS):
        folder.mkdir(exist_ok=True)
        tmp = folder / f"{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            # O_EXCL on a fresh name, mode 0666 less the umask: the file open(path, "w") would make
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileNotFoundError:
            continue
    raise FileNotFoundError(errno.ENOENT, f"cannot create a temporary file in {folder}")


def scratch_file(path: str | os.PathLike, role: str) -> Path:
    """A fresh temporary for data a writer of ``path`` streams before the final write (a trace's
    tensors, written while the model runs): kept and cleaned as ``path``'s own temporaries are,
    under the name ``<target name>.<role>``. The caller removes it when done."""
    target = Path(path).with_name(f"{Path(path).name}.{role}")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target)
    return _new_temporary(target)


def discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary (a :func:`scratch_file` done with) and its folder once empty."""
    tmp = Path(tmp)
    tmp.unlink(missing_ok=True)
    if tmp.parent.name == TMP_DIR:
        _remove_if_empty(tmp.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, make_parents: bool = True) -> Path:
    """Run ``write(tmp)``, fsync ``tmp`` and rename it over ``path``; see the module docstring.

    ``make_parents``: create missing folders (else a missing folder is a FileNotFoundError).
    """
    path = Path(path)
    check_target(path, make_parents=make_parents)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path)
        tmp = _new_temporary(path)
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _cannot(path, exc, "it is a directory" if path.is_dir() else None) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_if_empty(path.parent / TMP_DIR)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating missing folders (:func:`atomic_write`)."""
    check_type("atomic_write_text(text)", text, str)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
