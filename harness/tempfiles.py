"""Temp files of atomic writes: named after their writer, swept when the writer is gone, and
made readable as the user's umask says.

Every atomic write in the harness goes temp file in the target's folder -> ``os.replace``. A
kill between the two leaves ``.<name>.<host>.<pid>.<random>.tmp`` behind; the next write of the
same target (the same command run again) removes those whose process on this host is dead,
never a live writer's (ranks building one cache at once each keep theirs).

``mkstemp`` creates files 0600; files other users read (dataset caches, memory banks, records,
checkpoints) are switched to ``0666 & ~umask`` (0644 typically) before the rename.
"""
from __future__ import annotations

import fnmatch
import os
import socket
import tempfile
from pathlib import Path


def shared_mode() -> int:
    """``0o666`` less the process's umask (what ``open(path, "w")`` would give)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


def mkstemp_for(path: Path, listing: list[str] | None = None) -> tuple[int, str]:
    """(fd, temp path) in ``path``'s folder, named after this writer; sweeps dead writers' first.
    ``listing``: the names in that folder, when the caller has just listed it (``sweep_stale``)."""
    path = Path(path)
    sweep_stale(path, listing=listing)
    return tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(path: Path, whole_folder: bool = False, listing: list[str] | None = None) -> list[Path]:
    """Remove temp files of ``path`` (or of any file in ``path``'s folder when ``whole_folder``;
    then ``path`` is the folder) left by dead writers on this host; returns what went.
    ``listing``: the folder's names (or at least those starting with "."), when the caller has
    just listed it: a runs folder of 100,000 runs takes a tenth of a second to list again."""
    path = Path(path)
    folder, pattern = (path, ".*.tmp") if whole_folder else (path.parent, f".{path.name}.*.tmp")
    host = socket.gethostname()
    removed = []
    try:
        if listing is None:
            candidates = list(folder.glob(pattern))
        else:
            candidates = [folder / name for name in fnmatch.filter(listing, pattern)]
    except OSError:
        return removed
    for tmp in candidates:
        head, pid, _rand = (tmp.name[1:-len(".tmp")].rsplit(".", 2) + ["", ""])[:3]
        if not head.endswith("." + host) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed
