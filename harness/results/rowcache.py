"""The table rows of unchanged result records, kept between ``tables`` runs.

``<runs>/.tables-rows.json`` maps each run folder to the identity of its ``result.json`` when it
was last read (inode, size, modification time in ns) and what ``tables`` took from it: the row
of a done record (``harness.results.tables.record_row`` without the record itself) or the whole
failed record. A later ``tables`` run stats each ``result.json`` (one system call) and parses only
the files whose identity changed: records are written by atomic rename (a new inode), so a
rewritten record never matches its old entry. Bad files are not kept (they are named on every
run), nor is anything when the loading code changed (the cache is tagged with a hash of the
code that makes rows).

JSON, not pickle: the runs folder may be shared, and loading it runs no code. Reading and
writing are best effort: a missing, unreadable, malformed or foreign file is an empty cache;
a folder that cannot be written is left without one. Deleting the file is always safe.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import orjson

from harness import tempfiles

FILE = ".tables-rows.json"
# the modules whose code decides what a row holds and which records are good
_SOURCES = ("records.py", "tables.py")


def code_tag() -> str:
    """Hash of the code that checks records and makes rows: a cache from other code is ignored."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        with contextlib.suppress(OSError):
            h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def read(runs_dir: Path | str, tag: str) -> dict[str, list]:
    """name -> [inode, size, mtime_ns, kind ("done" | "failed"), payload]; {} when there is no
    usable cache."""
    try:
        with open(os.path.join(runs_dir, FILE), "rb") as f:
            data = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if type(data) is not dict or data.get("code") != tag or type(data.get("entries")) is not dict:
        return {}
    return data["entries"]


def write(runs_dir: Path | str, tag: str, entries: dict[str, list]) -> bool:
    """Replace the cache atomically (no fsync: a lost cache is rebuilt); False when it could not
    be written (a read-only folder, a full disk, a value JSON cannot hold)."""
    path = Path(runs_dir) / FILE
    try:
        data = orjson.dumps({"code": tag, "entries": entries})
    except (TypeError, orjson.JSONEncodeError):
        return False
    tmp = None
    try:
        fd, tmp = tempfiles.mkstemp_for(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, tempfiles.shared_mode())
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
