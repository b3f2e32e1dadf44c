"""Files written whole or not at all, and output paths checked before any work starts.

Every file mmembed writes (CLI outputs, evaluation reports, saved model folders, checkpoints' extra files) goes to a
temporary name in the target's folder and is renamed over the target when complete (``os.replace`` is atomic on one
file system): an interrupted run leaves either the old file or the new one, never a truncated file. This holds per
file; a saved model folder is several files, and how an interrupted save into an existing folder is recognised is
described in :mod:`mmembed.model_folder`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputPathError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block ends without an error it is renamed to ``target``,
    otherwise it is removed (the old ``target``, if any, is untouched). The new file gets the permissions of the file
    it replaces, or those of a newly created file (``0o666`` less the umask) when there is none."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)  # mkstemp made it private (0o600)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` sets it to read it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(target: str | Path, text: str, encoding: str = "utf-8", newline: str | None = None) -> Path:
    """Write ``text`` to ``target`` atomically (``newline`` as in :func:`open`: ``"\\n"`` keeps the same bytes on
    every platform)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding, newline=newline)
    return Path(target)


def check_output_file(path: str | Path, suffixes: Iterable[str] | None = None, what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written: an allowed suffix, not a folder, its folder exists (or
    can be made below an existing writable folder) and is writable. Raises :class:`OutputPathError` naming the fix."""
    path = Path(path)
    allowed = tuple(suffixes or ())
    if allowed and path.suffix not in allowed:
        raise OutputPathError(f"{what} '{path}': use a file name ending in {' or '.join(allowed)}.")
    if path.is_dir():
        raise OutputPathError(f"{what} '{path}' is a folder; give a file name.")
    check_output_folder(path.parent, what=f"{what} '{path}': its folder")
    return path


def check_output_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Check that ``folder`` is (or can be created as) a writable folder; raises :class:`OutputPathError`."""
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputPathError(f"{what} '{folder}' cannot be created: '{existing}' is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} '{folder}' is not writable (no write permission in '{existing}').")
    try:  # os.access says yes to root everywhere: a file made and removed is the real test (/proc, read-only mounts)
        with tempfile.NamedTemporaryFile(prefix=".mmembed-write-test.", dir=existing):
            pass
    except OSError as exc:
        raise OutputPathError(f"{what} '{folder}' is not writable ({exc.strerror} in '{existing}').") from None
    return folder
