"""The table rows of unchanged result records, kept between ``tables`` runs.

``<runs>/.tables-rows.json`` maps each run folder to the identity of its ``result.json`` when it
was last read (inode, size, modification and change times in ns) and what ``tables`` took from
it: the row of a done record (``harness.results.tables.record_row`` without the record itself)
or the whole failed record. A later ``tables`` run stats each ``result.json`` (one system call)
and parses only the files whose identity changed (and, per setup, one record for its config):
records are written by atomic rename (a new inode), and a chmod or an edit that keeps the
modification time still changes the change time. Bad files are not kept (they are named on every
run), nor a record whose values JSON would not give back as they are (an infinite number, a
lone surrogate), nor anything when the loading code changed (the cache is tagged with a hash of
the code that makes rows).

The file is a header line (the code tag and the SHA-256 of the rest), then the entries as JSON:
JSON, not pickle, because the runs folder may be shared and loading it must run no code; the
hash, so that a damaged file is an empty cache, never a wrong table. Reading and writing are
best effort: a missing, unreadable, damaged or foreign file is an empty cache; a folder that
cannot be written is left without one. Deleting the file is always safe.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
from pathlib import Path

import orjson

from harness import tempfiles

FILE = ".tables-rows.json"
# the modules whose code decides what a row holds and which records are good
_SOURCES = ("records.py", "tables.py", "fastrow.py")


def code_tag() -> str:
    """Hash of the code that checks records and makes rows: a cache from other code is ignored."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        with contextlib.suppress(OSError):
            h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def read(runs_dir: Path | str, tag: str) -> dict[str, list]:
    """name -> [inode, size, mtime_ns, ctime_ns, kind ("done" | "failed"), payload], and "" -> the
    length of a done row's payload; {} when there is no usable cache."""
    try:
        with open(os.path.join(runs_dir, FILE), "rb") as f:
            header, _, body = f.read().partition(b"\n")
        head = orjson.loads(header)
        if (type(head) is not dict or head.get("code") != tag
                or head.get("sha256") != hashlib.sha256(body).hexdigest()):
            return {}
        entries = orjson.loads(body)
    except (OSError, orjson.JSONDecodeError):
        return {}
    return entries if type(entries) is dict else {}


def keeps(values) -> bool:
    """Whether JSON gives ``values`` (a row's cells) back as they are: finite floats, 64-bit
    integers, strings without lone surrogates."""
    for v in values:
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                return False
        elif t is str:
            if not v.isascii():
                try:
                    v.encode()
                except UnicodeEncodeError:
                    return False
        elif t is int:
            if not -(1 << 63) <= v < (1 << 64):
                return False
        elif v is not None and t is not bool:
            return False
    return True


def keeps_record(record: dict) -> bool:
    """Whether JSON gives ``record`` (a whole failed record) back as it is."""
    try:
        return orjson.loads(orjson.dumps(record)) == record
    except (TypeError, orjson.JSONEncodeError, orjson.JSONDecodeError):
        return False


def write(runs_dir: Path | str, tag: str, entries: dict[str, list], listing: list[str] | None = None) -> bool:
    """Replace the cache atomically (no fsync: a lost cache is rebuilt); False when it could not
    be written (a read-only folder, a full disk, a value JSON cannot hold). ``listing``: the
    runs folder's names starting with "." when the caller has just listed it (where dead
    writers' temp files are looked for: ``tempfiles.sweep_stale``)."""
    path = Path(runs_dir) / FILE
    try:
        body = orjson.dumps(entries)
    except (TypeError, orjson.JSONEncodeError):
        return False
    header = orjson.dumps({"code": tag, "sha256": hashlib.sha256(body).hexdigest()})
    tmp = None
    try:
        fd, tmp = tempfiles.mkstemp_for(path, listing)
        with os.fdopen(fd, "wb") as f:
            f.write(header + b"\n")
            f.write(body)   # not joined to the header first: a copy of tens of MB
        os.chmod(tmp, tempfiles.shared_mode())
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
