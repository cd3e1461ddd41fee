"""Result records: atomic writing, and loading that names every bad file and carries on.

One JSON record per run (``<runs>/<run_id>/result.json``, schema 2, written by
``harness.train``). Loading never stops at a bad file: a record that is not a JSON object, has
a field of the wrong type, a NaN accuracy, or is a directory, is skipped with one line naming
the file (``problems``), and the command exits non-zero at the end. A run folder whose job
ended without writing a record (``job.json`` and a finished job, ``harness.jobs``) becomes an
in-memory failed record, so tables count it.

Loading is the hot path of ``run_all.py tables`` (100,000 records): one ``os.open``
(relative to the open runs folder) and ``read`` per file, orjson to parse, a one-pass type
check for the common case (``check_record``'s named checks only for the rest), the table row
read while the record is fresh (``load_records_and_rows``), the cycle collector paused
meanwhile. For ``tables`` the rows of unchanged records come from the row cache
(``harness.results.rowcache``: one ``stat`` per record instead of a parse); a record read anew
that is a plainly good done one gives its row without a full parse
(``harness.results.fastrow``: msgspec decodes only the row's fields); and a first run over
many records reads them in worker processes and this one, which reads a share while they run
(``_parsed_in_workers``). Two reading threads were tried and measured slower on two cores (the
GIL passes at every system call).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import operator
import os
import sys
from pathlib import Path

import orjson

from harness import tempfiles
from harness.results import rowcache
from models.errors import BenchError

SCHEMA_VERSION = 2
SCHEMAS = (1, 2)          # schema 1 records (no setup id, no data identity) still load
IDENTITY_FIELDS = ("run_id", "status", "backbone", "method", "dataset", "variant", "data_source", "seed")
RECORD_FIELDS = IDENTITY_FIELDS + (
    "schema", "setup_id", "experiment", "metrics", "params", "epochs", "wall_time_s", "compute_time_s",
    "segments", "seconds_per_epoch", "train_samples_per_s", "peak_memory_bytes", "device", "world_size",
    "git_commit", "packages", "config", "config_hash", "data", "pretrained", "start_time", "end_time", "error")
METRIC_FIELDS = ("acc_last", "acc_best_test", "acc_best_val", "acc_vote")
STATUSES = ("done", "failed")
DATA_SOURCES = ("official", "synthetic")


class ResultsError(BenchError):
    """A result record, reference file or README that the tables cannot be built from."""


# ------------------------------------------------------------------ atomic files

def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else tempfiles.shared_mode()
    fd, tmp = tempfiles.mkstemp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_record(path: Path | str, record: dict) -> None:
    """Write one result record atomically (strict JSON: NaN/inf are refused, not written)."""
    try:
        text = json.dumps(record, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ResultsError(f"{path}: record is not valid JSON data: {err}") from None
    write_bytes_atomic(path, (text + "\n").encode())


# ------------------------------------------------------------------ checking

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_IDENTITY = operator.itemgetter("run_id", "backbone", "method", "dataset", "variant", "seed", "data_source", "status")
_OBJECT_OR_NULL = (dict, type(None))
_NUMBER_OR_NULL = (int, float, type(None))


def _plainly_good(r) -> bool:
    """The common case, checked in few steps: a schema-2 record of the expected types whose
    metrics are finite numbers or null (anything else goes through ``check_record``'s named checks)."""
    if type(r) is not dict or r.get("schema") != SCHEMA_VERSION:
        return False
    try:
        run_id, backbone, method, dataset, variant, seed, source, status = _IDENTITY(r)
    except KeyError:
        return False
    if not (type(run_id) is type(backbone) is type(method) is type(dataset) is str
            and (variant is None or type(variant) is str) and type(seed) is int and source in DATA_SOURCES):
        return False
    if status == "done":
        metrics = r.get("metrics")
        if type(metrics) is not dict:
            return False
        for v in map(metrics.get, METRIC_FIELDS):
            if v is not None and not (type(v) in (int, float) and math.isfinite(v)):
                return False
    elif status != "failed":
        return False
    get = r.get
    return (type(get("params")) in _OBJECT_OR_NULL and type(get("data")) in _OBJECT_OR_NULL
            and type(get("pretrained")) in _OBJECT_OR_NULL and type(get("wall_time_s")) in _NUMBER_OR_NULL
            and type(get("compute_time_s")) in _NUMBER_OR_NULL and type(get("seconds_per_epoch")) in _NUMBER_OR_NULL
            and type(get("peak_memory_bytes")) in _NUMBER_OR_NULL and type(get("epochs")) in _NUMBER_OR_NULL)


def check_record(record, where: Path) -> str | None:
    """None when the record can be tabulated, else one line naming the file and the field."""
    if _plainly_good(record):
        return None
    if not isinstance(record, dict):
        return f"{where}: expected a JSON object, got a JSON {type(record).__name__}"
    if record.get("schema") not in SCHEMAS:
        return f"{where}: schema {record.get('schema')!r} is not supported (expected one of {SCHEMAS})"
    missing = [k for k in IDENTITY_FIELDS if k not in record]
    if missing:
        return f"{where}: lacks {', '.join(missing)}"
    if record["status"] not in STATUSES:
        return f"{where}: status {record['status']!r} is not one of {', '.join(STATUSES)}"
    if record["data_source"] not in DATA_SOURCES:
        return f"{where}: data_source {record['data_source']!r} is not one of {', '.join(DATA_SOURCES)}"
    for key in ("run_id", "backbone", "method", "dataset"):
        if not isinstance(record[key], str):
            return f"{where}: {key} is {record[key]!r}, expected a string"
    if not isinstance(record["variant"], (str, type(None))):
        return f"{where}: variant is {record['variant']!r}, expected a string"
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        return f"{where}: seed is {record['seed']!r}, expected an integer"
    if record["status"] == "done":
        metrics = record.get("metrics")
        if not isinstance(metrics, dict):
            return f"{where}: a done record needs a 'metrics' object, got {metrics!r}"
        for key in METRIC_FIELDS:
            v = metrics.get(key)
            if v is not None and not _is_number(v):
                return f"{where}: metrics.{key} is {v!r}, expected a number (accuracy in %) or null"
            if v is not None and not math.isfinite(v):
                return f"{where}: metrics.{key} is {v}, not a finite accuracy (the run diverged?)"
    for key in ("params", "data", "pretrained"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{where}: {key} is {record[key]!r}, expected an object or null"
    for key in ("wall_time_s", "compute_time_s", "seconds_per_epoch", "peak_memory_bytes", "epochs"):
        v = record.get(key)
        if v is not None and not _is_number(v):
            return f"{where}: {key} is {v!r}, expected a number or null"
    return None


def _normalise(record: dict) -> dict:
    """Fill what older or hand-made records lack (error as an object, variant as text)."""
    if record.get("variant") is None:
        record["variant"] = ""
    err = record.get("error")
    if err is not None and not isinstance(err, dict):
        record["error"] = {"type": "error", "message": str(err)}
    return record


# ------------------------------------------------------------------ loading

def _parse(data: bytes) -> object:
    """JSON text -> Python: orjson (several times faster than ``json``; 100,000 records are
    read per ``tables``), and ``json`` for what strict orjson refuses but ``json`` reads (a
    ``NaN`` accuracy, a lone surrogate), so such a file is judged by its content as before and a
    malformed one gets ``json``'s message."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


READ_SIZE = 1 << 16


def _read_bytes(path: str | Path, dir_fd: int | None = None, rel: str | None = None,
                key: list | None = None) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None), or (None, one line naming ``path``), or (None, "absent"). With
    ``dir_fd``, the file is opened as ``rel`` inside that open folder (the same file as ``path``:
    fewer path components for the kernel to resolve: about a quarter less time per open here).
    ``key``: filled with the open file's [inode, size, mtime_ns, ctime_ns] (the row cache's
    identity of a file)."""
    try:   # os.open/os.read: fewer system calls than open(); this runs per record
        fd = os.open(path, os.O_RDONLY) if dir_fd is None else os.open(rel, os.O_RDONLY, dir_fd=dir_fd)
        try:
            if key is not None:
                st = os.fstat(fd)
                key[:] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            data = os.read(fd, READ_SIZE)  # a record is a few KiB: one read, no stat
            if len(data) == READ_SIZE:     # a larger file: read the rest
                data += b"".join(iter(lambda: os.read(fd, READ_SIZE), b""))
        finally:
            os.close(fd)
        return data, None
    except FileNotFoundError:
        return None, "absent"
    except IsADirectoryError:
        return None, f"{path}: is a directory, expected a JSON file"
    except OSError as err:
        return None, f"{path}: cannot read: {err.strerror}"


def _parsed(data: bytes, path: str | Path) -> tuple[object, str | None]:
    """(parsed JSON, None) or (None, one line naming ``path``)."""
    try:
        return _parse(data), None
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{path}: bad JSON: {str(err).splitlines()[0][:80]}"
    except RecursionError:   # orjson refuses 1,024 levels, json's recursion then stops
        return None, f"{path}: bad JSON: nested too deeply"


def _read(path: str | Path, dir_fd: int | None = None, rel: str | None = None,
          key: list | None = None) -> tuple[object, str | None]:
    """(parsed JSON, None), or (None, one line naming ``path``), or (None, "absent"): the file
    as ``_read_bytes`` reads it, parsed."""
    data, problem = _read_bytes(path, dir_fd, rel, key)
    return (None, problem) if problem else _parsed(data, path)


def died_record(job: dict, state: str, run_dir: Path) -> dict:
    """A failed record (in memory) for a job that ended without its run writing one."""
    from harness import jobs

    log, tail = jobs.job_log(job, 3)
    return {"schema": SCHEMA_VERSION, "run_id": job.get("run_id", run_dir.name), "status": "failed",
            "setup_id": job.get("setup_id"), "experiment": job.get("experiment"),
            **{k: job.get(k) for k in ("backbone", "method", "dataset", "seed")},
            "variant": job.get("variant") or "", "data_source": job.get("data_source", "official"),
            "error": {"type": f"job {state}", "message": (f"job {job['job_id']} ended ({state}) without a record; "
                      f"log {log}" + (f": {tail[-1]}" if tail else ""))}}


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause Python's cycle collector meanwhile: parsed records are trees (no cycles), and
    collecting while 100,000 of them are built rescans every earlier one (about 40% of the load).

    On the way out, what was built meanwhile joins the oldest generation (``gc.freeze`` then
    ``gc.unfreeze``: a list splice, no scan), as a collection would have put it; left in the
    youngest, the next few collections would each scan all of it (about a second for 100,000
    records, paid by whatever runs next). Cycles among it are still found by full collections."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:   # nothing frozen by others, which unfreeze would release
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


class CachedRecord:
    """Stands, as the first item of a row, for a done record whose row came from the row cache
    (``harness.results.rowcache``), or was read now into the cache (from its bytes without a full
    parse, ``harness.results.fastrow``, or parsed and let go); ``load()`` parses it again (tables
    need one record per setup: its config, data and checkpoint identity)."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path

    def load(self) -> dict:
        """The record, or ``ResultsError`` when the file went bad since it was stat'ed."""
        record, problem = _read(self.path)
        if problem is None:
            problem = check_record(record, Path(self.path))
        if problem:   # replaced or removed between its stat and now (a job finishing meanwhile)
            raise ResultsError(f"{self.path}: changed while the tables were read "
                               f"({'removed' if problem == 'absent' else problem}); run tables again")
        return _normalise(record)


def _checked(record, problem: str | None, path: str) -> tuple[dict | None, str | None]:
    """(the record, None) or (None, one line naming ``path`` | "absent"), of what ``_read`` gave:
    checked (the one-pass check, the named checks for the rest) and normalised."""
    if problem is None:
        if not _plainly_good(record):
            problem = check_record(record, Path(path))
        if problem is None and (record["variant"] is None or record.get("error") is not None):
            _normalise(record)
    return (None, problem) if problem else (record, None)


def _load_one(base: str, rel: str, dir_fd: int | None) -> tuple[dict | None, str | None]:
    """``_checked`` of the record ``base + rel``."""
    return _checked(*_read(base + rel, dir_fd, rel), base + rel)


def _open_dir(base: str) -> int | None:
    if os.open in os.supports_dir_fd:
        with contextlib.suppress(OSError):
            return os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    return None


def _cache_entry(key: list, record: dict, made: tuple | None) -> list | None:
    """The row cache's entry of a good record: ``key`` + ["done", its row without the record]
    or ``key`` + ["failed", the record] (``made``: its row, None for a failed one); None when
    JSON would not give it back as it is (``rowcache.keeps``)."""
    if made is None:
        return key + ["failed", record] if rowcache.keeps_record(record) else None
    return key + ["done", list(made[1:])] if rowcache.keeps(made[1:]) else None


def _row_from_json(row):
    """The shortcut that makes ``row``'s row minus the record straight from a file's bytes
    (``fastrow.record_row_from_json``, None where it gives up), or None for another ``row``."""
    from harness.results import tables

    if row is not tables.record_row:
        return None
    from harness.results import fastrow   # msgspec: needed by tables only, imported here

    return fastrow.record_row_from_json


def _outcome(base: str, rel: str, dir_fd: int | None, row, fast) -> tuple[str, object]:
    """What the row cache keeps of the record ``base + rel`` (read now, not from the cache):
    ("entry", ``_cache_entry``), ("record", (a good record the cache cannot keep, its row)),
    ("problem", line) or ("absent", None). ``fast``: ``_row_from_json(row)``; a done record it can read is
    not parsed whole."""
    key = []
    path = base + rel
    data, problem = _read_bytes(path, dir_fd, rel, key)
    if problem is None:
        if fast is not None and (made := fast(data)) is not None:
            return "entry", key + ["done", list(made)]
        record, problem = _checked(*_parsed(data, path), path)
    if problem:
        return ("absent", None) if problem == "absent" else ("problem", problem)
    made = row(record)
    entry = _cache_entry(key, record, made)
    return ("entry", entry) if entry is not None else ("record", (record, made))


def _row_entries(base: str, names: list[str], row) -> list[tuple]:
    """``_outcome`` of each of ``names``, read in a worker process or, for its own share, the main
    one (``_parsed_in_workers``)."""
    fast = _row_from_json(row)
    dir_fd = _open_dir(base)
    try:
        with cyclic_gc_paused():
            return [_outcome(base, f"{name}{os.sep}result.json", dir_fd, row, fast) for name in names]
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


# A first ``tables`` run (no row cache) over at least this many records parses them in parallel,
# one process per core (Linux, fork: this one and a worker per other core, up to 8 in all):
# 100,000 records of a real record's size take several seconds to parse on one core.
PARALLEL_MIN = 4096


def _workers() -> int:
    import multiprocessing

    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return min(len(os.sched_getaffinity(0)), 8)


def _own_share(workers: int) -> float:
    """The share of the records this process reads itself while ``workers - 1`` worker processes
    read the rest. It must also unpickle their outcomes, about an eighth of a record's reading
    time (measured on records of a real one's size: reading 23 us, pickling 3 us, unpickling 3 us
    per record), so all finish together when it takes half with 2 cores, a fifth with 4, 3% with 8."""
    read, pickled, unpickled = 23.0, 3.0, 3.0
    worker = (read + pickled) / (workers - 1)      # a worker's time per record of the whole
    return max(0.0, (worker - unpickled) / (read + worker - unpickled))


def _parsed_in_workers(base: str, names: list[str], row) -> dict[str, tuple]:
    """name -> ``_row_entries`` outcome of every one of ``names``, parsed in worker processes and
    this one (``_own_share``). {} when there are too few names or cores, when the workers cannot
    start or this process's share fails: then the caller reads them itself; only this process's
    share when a worker died. On any error or interrupt the chunks not yet started are cancelled
    (the ones already handed to a worker are waited for: a chunk or two, under a second here)."""
    workers = _workers()
    if workers < 2 or len(names) < PARALLEL_MIN:
        return {}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    own = int(len(names) * _own_share(workers))
    rest = names[own:]
    size = -(-len(rest) // (4 * (workers - 1)))   # a few chunks per worker: even finish times
    chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
    mine: list = []
    try:
        pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork"))
    except Exception:  # noqa: BLE001 - no processes here (limits, a sandbox): read serially
        return {}
    futures = []
    try:
        for chunk in chunks:   # one by one: a submit that fails leaves the earlier ones to cancel
            futures.append(pool.submit(_row_entries, base, chunk, row))
        mine = _row_entries(base, names[:own], row)     # while the workers read the rest
        done = [f.result() for f in futures]
    except BaseException as err:   # a worker died, or Ctrl-C: the queued chunks are not started
        for f in futures:
            f.cancel()
        pool.shutdown()
        if not isinstance(err, Exception):
            raise
        return dict(zip(names, mine))
    pool.shutdown()
    out = dict(zip(names, mine))
    for chunk, outcomes in zip(chunks, done):
        out.update(zip(chunk, outcomes))
    return out


def _load_files(runs_dir: Path, names: list[str], row=None,
                cached: dict | None = None) -> tuple[list[dict], list, list[str], list[str], dict | None]:
    """(records, ``row`` of each record (when given), problems, names without a result.json,
    row-cache entries) of the run folders ``names``.

    With ``cached`` (``rowcache.read``'s entries; needs ``row``), a record whose file has the
    identity its entry names is not read: a done one's row starts with a ``CachedRecord`` (and
    ``records`` lacks it), a failed one is the entry's record. A record read now that the cache
    can keep is served the same way (``_outcome``; a plainly good done record is then not parsed
    whole); many of them are read in worker processes (``_parsed_in_workers``). The entries of
    every good record are returned for ``rowcache.write`` (None without ``cached``)."""
    records, rows, problems, unrecorded = [], [], [], []
    row_len = cached.get("", 0) if cached else 0     # "" holds the length of a done row
    entries = None if cached is None else ({"": row_len} if row_len else {})
    base = os.path.join(str(runs_dir), "")
    fast = None if cached is None else _row_from_json(row)   # imported before workers fork
    pre = {} if cached is None else _parsed_in_workers(base, [n for n in names if n not in cached], row)
    dir_fd = _open_dir(base)
    try:
        for name in names:        # the hot loop (100,000 records): plain strings, no Path objects
            rel = f"{name}{os.sep}result.json"
            if entries is None:
                record, problem = _load_one(base, rel, dir_fd)
                if problem == "absent":
                    unrecorded.append(name)
                elif problem:
                    problems.append(problem)
                else:
                    records.append(record)
                    if row is not None:
                        rows.append(row(record))
                continue
            hit = cached.get(name)   # (on a first run there is none: no stat, the read's fstat)
            if type(hit) is list and len(hit) == 6:
                try:   # one stat instead of open + read + close + parse, for an unchanged record
                    st = os.stat(rel, dir_fd=dir_fd) if dir_fd is not None else os.stat(base + rel)
                    if hit[:4] != [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]:
                        hit = None
                except OSError:
                    hit = None   # absent or unreadable: the read below says which
                if hit is not None and not (hit[4] == "done" and type(hit[5]) is list and row_len
                                            and len(hit[5]) == row_len
                                            or hit[4] == "failed" and type(hit[5]) is dict):
                    hit = None   # a malformed entry: read the file
            else:
                hit = None
            if hit is None:   # read now, or by a worker
                kind, hit = pre.get(name) or _outcome(base, rel, dir_fd, row, fast)
                if kind == "absent":
                    unrecorded.append(name)
                    continue
                if kind == "problem":
                    problems.append(hit)
                    continue
                if kind == "record":    # good, but not for the cache: the record and its row
                    records.append(hit[0])
                    rows.append(hit[1])
                    continue
                if hit[4] == "done":
                    entries[""] = row_len = len(hit[5])
            entries[name] = hit
            if hit[4] == "done":
                rows.append((CachedRecord(base + rel), *hit[5]))
            else:
                records.append(hit[5])
                rows.append(None)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return records, rows, problems, unrecorded, entries


def load_records(runs_dir: Path | str, ask=None) -> tuple[list[dict], list[str]]:
    """(records, problems): every readable ``<runs_dir>/<run>/result.json``, and one line per
    file that could not be used. With ``ask`` (``harness.jobs.scheduler_states``), run folders
    with a finished job but no record add a failed record (one batched scheduler call)."""
    records, _, problems = load_records_and_rows(runs_dir, None, ask)
    return records, problems


def load_records_and_rows(runs_dir: Path | str, row, ask=None,
                          cache: bool = False) -> tuple[list[dict], list, list[str]]:
    """(records, rows, problems): ``load_records``, and ``row(record)`` of each record, in the
    same order (nothing when ``row`` is None). Each row is computed as soon as its record is
    read: a record just parsed is still in the CPU's caches, and reading its fields then costs a
    fraction of a later pass over 100,000 records (``tables.collect``).

    ``cache`` (with ``tables.record_row`` as ``row``): keep rows between runs in the runs
    folder's row cache (``harness.results.rowcache``) and parse only new or changed records.
    Then ``records`` holds the failed records, and the done ones the cache cannot keep (a value
    JSON would not give back as it is): the row of every other done record starts with a
    ``CachedRecord`` instead of the record (``CachedRecord.load`` parses it)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ResultsError(f"runs directory not found: {runs_dir} (no runs yet, or a wrong --runs?)")
    with os.scandir(runs_dir) as entries:
        listed = list(entries)
    names = sorted(e.name for e in listed if e.is_dir() and not e.name.startswith("."))
    dotted = [e.name for e in listed if e.name.startswith(".")]   # the row cache's, and its temp files
    del listed   # 100,000 DirEntry objects: not kept while the records load
    tag = cached = None
    with cyclic_gc_paused():
        if cache and row is not None:
            tag = rowcache.code_tag()
            cached = rowcache.read(runs_dir, tag)
        records, rows, problems, unrecorded, entries = _load_files(runs_dir, names, row, cached)
        if entries is not None and entries != cached:
            rowcache.write(runs_dir, tag, entries, dotted)
    if ask is not None and unrecorded:
        from harness import jobs, matrix

        found = []
        for name in unrecorded:
            job, problem = matrix.read_job(runs_dir / name)
            if problem:
                problems.append(problem)
            if job is not None and all(job.get(k) is not None for k in ("backbone", "method", "dataset", "seed")):
                found.append((name, job))
        states = ask([job for _, job in found]) if found else {}
        for name, job in found:
            state = states.get(str(job["job_id"]))
            if state is not None and not jobs.is_alive(state):
                records.append(died_record(job, state, runs_dir / name))
                if row is not None:
                    rows.append(row(records[-1]))
    return records, rows, problems


def load_eval_records(evals_dir: Path | str | None) -> tuple[list[dict], list[str]]:
    """(records, problems): every ``<evals_dir>/*.json`` written by ``run_all.py eval`` (kind
    "eval"), and one line per file that could not be used; nothing when the folder is absent."""
    if evals_dir is None or not Path(evals_dir).is_dir():
        return [], []
    records, problems = [], []
    for path in sorted(Path(evals_dir).glob("*.json")):
        record, problem = _read(path)
        if problem is None:
            metrics = record.get("metrics") if isinstance(record, dict) else None
            ok = (isinstance(record, dict) and record.get("kind") == "eval" and isinstance(metrics, dict)
                  and _is_number(metrics.get("acc")) and isinstance(record.get("checkpoint"), dict)
                  and all(isinstance(record.get(k), str) for k in ("backbone", "method", "dataset", "split")))
            problem = None if ok else (f"{path}: not an eval record (kind 'eval' with backbone, method, dataset, "
                                       "split, checkpoint and a numeric metrics.acc)")
        if problem:
            problems.append(problem)
        else:
            records.append(record)
    return records, problems
