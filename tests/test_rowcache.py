"""The tables' row cache (``harness.results.rowcache``): a later ``tables`` run parses only new or
changed records and gives byte for byte what a run without the cache gives; a changed, removed,
added or bad record is seen; a broken, foreign or unwritable cache is never an error."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import results
from harness.results import records as records_mod
from harness.results import rowcache
from tests.test_tables_golden import GOLDEN, REFERENCE, write_golden_runs


def _outputs(runs: Path, out: Path, cache: bool = True) -> dict[str, bytes]:
    outputs, t = results.build_outputs(runs, out, REFERENCE, plots_=False, cache=cache)
    files = {path.name: data for path, data in outputs.items()}
    files["problems.txt"] = "".join(p.replace(str(runs), "<runs>") + "\n" for p in t.problems).encode()
    return files


def _golden() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in GOLDEN.iterdir()}


@pytest.fixture()
def parsed(monkeypatch):
    """Counts the record files read (``records._read_bytes`` calls)."""
    calls = []
    real = records_mod._read_bytes

    def counting(path, *args):
        calls.append(str(path))
        return real(path, *args)
    monkeypatch.setattr(records_mod, "_read_bytes", counting)
    return calls


def test_a_cached_run_is_byte_identical_and_parses_only_what_it_must(tmp_path, parsed):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    assert _outputs(runs, tmp_path / "a") == _golden()          # builds the cache
    first = len(parsed)
    cache = rowcache.read(runs, rowcache.code_tag())
    assert len(cache) > 200
    parsed.clear()
    outputs, t = results.build_outputs(runs, tmp_path / "b", REFERENCE, plots_=False)   # from the cache
    again = len(parsed)
    assert outputs[tmp_path / "b" / "tables.md"] == _golden()["tables.md"]
    # read again: the 25 bad files (named every time), the folder without a record, and one
    # record per setup (its config)
    assert again <= 25 + 1 + len(t.setups) < first / 2, (again, first, len(t.setups))


def test_changed_added_removed_and_broken_records_are_seen(tmp_path):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    _outputs(runs, tmp_path / "a")
    done = sorted(p for p in runs.glob("*/result.json")
                  if p.parent.name != ".hidden" and _status(p) == "done")
    # a record replaced (as train does: atomically, a new file) with another accuracy
    changed = json.loads(done[0].read_text())
    changed["metrics"]["acc_last"] = 12.5
    changed["metrics"]["acc_best_test"] = 12.5
    results.write_record(done[0], changed)
    done[1].unlink()                                             # a record removed
    done[2].write_text("{ not json")                             # a record gone bad
    added = dict(changed, run_id="zz-added", seed=99)             # a record added
    results.write_record(runs / "zz-added" / "result.json", added)
    want = _outputs(runs, tmp_path / "fresh", cache=False)
    assert _outputs(runs, tmp_path / "cached") == want
    assert want != _golden() and b"bad JSON" in want["problems.txt"]


def _status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _signed(body: bytes, tag: str | None = None) -> bytes:
    """A cache file: header (code tag, SHA-256 of the body), then the body."""
    import hashlib

    head = {"code": tag or rowcache.code_tag(), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(head).encode() + b"\n" + body


@pytest.mark.parametrize("case", ["empty", "garbage", "no body", "foreign code", "damaged body",
                                  "entries not an object", "bad entries", "an empty row"])
def test_a_broken_or_foreign_cache_is_ignored_and_replaced(tmp_path, case):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    name = sorted(p.parent.name for p in runs.glob("*/result.json") if _status(p) == "done")[0]
    st = (runs / name / "result.json").stat()
    key = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    good = json.dumps({"": 18, name: key + ["done", [1] * 18]}).encode()
    content = {"empty": b"", "garbage": b"{ broken\n[]", "no body": _signed(b"")[:-1],
               "foreign code": _signed(good, "other"),
               "damaged body": _signed(good).replace(b"[1, 1", b"[2, 1"),       # the hash no longer matches
               "entries not an object": _signed(b"[1, 2]"),
               "bad entries": _signed(json.dumps({"": 18, "x": 1, name: key + ["done", [1]]}).encode()),
               "an empty row": _signed(json.dumps({"": 0, name: key + ["done", []]}).encode())}[case]
    (runs / rowcache.FILE).write_bytes(content)
    assert _outputs(runs, tmp_path / "a") == _golden()
    header = (runs / rowcache.FILE).read_bytes().partition(b"\n")[0]
    assert json.loads(header)["code"] == rowcache.code_tag()


def test_values_json_would_change_are_never_served_from_the_cache(tmp_path):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    done = sorted(p for p in runs.glob("*/result.json") if _status(p) == "done")
    rec = json.loads(done[0].read_text())
    rec["compute_time_s"] = float("inf")                   # json writes Infinity; orjson would give null
    done[0].write_text(json.dumps(rec))
    rec = json.loads(done[1].read_text())
    rec["run_id"] = rec["run_id"] + "-\udcff"              # a lone surrogate (a non-UTF-8 name)
    done[1].write_text(json.dumps(rec))
    want = _outputs(runs, tmp_path / "fresh", cache=False)
    assert _outputs(runs, tmp_path / "first") == want
    entries = rowcache.read(runs, rowcache.code_tag())
    assert done[0].parent.name not in entries and done[1].parent.name not in entries
    assert len(entries) > 200                              # the others are kept
    assert _outputs(runs, tmp_path / "again") == want


def test_a_chmod_or_an_edit_that_keeps_the_mtime_is_seen(tmp_path, parsed):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    _outputs(runs, tmp_path / "a")
    path = sorted(p for p in runs.glob("*/result.json") if _status(p) == "done")[0]
    st = path.stat()
    rec = json.loads(path.read_text())
    rec["metrics"]["acc_last"] = rec["metrics"]["acc_best_test"] = 12.5
    with open(path, "r+") as f:                             # edited in place, mtime put back
        f.write(json.dumps(rec).ljust(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino
    parsed.clear()
    assert _outputs(runs, tmp_path / "b") == _outputs(runs, tmp_path / "fresh", cache=False)
    assert str(path) in parsed[:len(parsed) // 2 + 1]           # the cached run read it again (its ctime)
    parsed.clear()
    path.chmod(0o600)                                            # a chmod alone: read again too
    _outputs(runs, tmp_path / "c")
    assert str(path) in parsed


def test_no_cache_neither_reads_nor_writes_it(tmp_path, parsed):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    assert _outputs(runs, tmp_path / "a", cache=False) == _golden()
    assert not (runs / rowcache.FILE).exists()
    _outputs(runs, tmp_path / "b")
    parsed.clear()
    assert _outputs(runs, tmp_path / "c", cache=False) == _golden()
    assert len(parsed) > 200                                     # every record parsed again


def test_a_runs_folder_that_cannot_be_written_gives_the_tables_without_a_cache(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_golden_runs(runs)

    def refuse(path, *args):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(rowcache.tempfiles, "mkstemp_for", refuse)   # a read-only folder (also as root)
    assert _outputs(runs, tmp_path / "a") == _golden()
    assert not (runs / rowcache.FILE).exists()
    assert rowcache.write(runs, "tag", {"": 1}) is False
    monkeypatch.undo()
    assert rowcache.write(runs, "tag", {"x": float("nan")}) is True   # orjson writes NaN as null
    assert rowcache.write(runs, "tag", {"x": 1 << 70}) is False       # past 64 bits: no cache


def test_a_dead_writers_temp_file_is_swept_from_the_listing_the_run_made(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    runs = tmp_path / "runs"
    write_golden_runs(runs)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = runs / f".{rowcache.FILE}.{host}.{dead.pid}.abc123.tmp"     # tempfiles' name: "." + the file's
    live = runs / f".{rowcache.FILE}.{host}.{os.getppid()}.def456.tmp"
    other = runs / f".result.json.{host}.{dead.pid}.ghi789.tmp"     # another file's: not the cache's to sweep
    for p in (stale, live, other):
        p.write_bytes(b"half")

    def no_glob(self, pattern):
        raise AssertionError(f"listed {self} again for {pattern}")
    monkeypatch.setattr(Path, "glob", no_glob)        # the folder was listed once already
    assert _outputs(runs, tmp_path / "a") == _golden()
    assert (runs / rowcache.FILE).is_file()
    assert not stale.exists() and live.exists() and other.exists()


def test_the_cli_says_how_to_skip_the_cache(capsys):
    from harness.cli import main

    with pytest.raises(SystemExit):
        main(["tables", "--help"])
    out = capsys.readouterr().out
    assert "--no-cache" in out and ".tables-rows.json" in out


def test_a_first_run_parses_in_worker_processes_with_the_same_output(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    monkeypatch.setattr(records_mod, "PARALLEL_MIN", 10)
    monkeypatch.setattr(records_mod, "_workers", lambda: 2)
    got = []
    real = records_mod._parsed_in_workers

    def spy(base, names, row):
        got.append(real(base, names, row))
        return got[-1]
    monkeypatch.setattr(records_mod, "_parsed_in_workers", spy)
    assert _outputs(runs, tmp_path / "a") == _golden()
    kinds = {outcome[0] for outcome in got[0].values()}
    entry_kinds = {value[4] for kind, value in got[0].values() if kind == "entry"}
    assert len(got[0]) > 250 and kinds == {"entry", "problem", "absent"}           # all from the workers
    assert entry_kinds == {"done", "failed"}
    parallel = rowcache.read(runs, rowcache.code_tag())
    (runs / rowcache.FILE).unlink()
    monkeypatch.setattr(records_mod, "_workers", lambda: 1)          # the same first run, serially
    assert _outputs(runs, tmp_path / "b") == _golden()
    assert rowcache.read(runs, rowcache.code_tag()) == parallel and len(parallel) > 200


def test_a_worker_that_dies_leaves_its_records_to_the_caller_and_keeps_this_process_share(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    monkeypatch.setattr(records_mod, "PARALLEL_MIN", 10)
    monkeypatch.setattr(records_mod, "_workers", lambda: 2)
    parent = os.getpid()
    real = records_mod._row_entries

    def dies_in_a_worker(base, names, row):
        if os.getpid() != parent:
            os._exit(1)             # killed mid-run (the OOM killer, a signal)
        return real(base, names, row)
    monkeypatch.setattr(records_mod, "_row_entries", dies_in_a_worker)
    got = []
    real_parsed = records_mod._parsed_in_workers
    monkeypatch.setattr(records_mod, "_parsed_in_workers", lambda *a: got.append(real_parsed(*a)) or got[-1])
    assert _outputs(runs, tmp_path / "a") == _golden()
    names = sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert list(got[0]) == names[:len(names) // 2]           # this process's half, the rest read after


@pytest.mark.parametrize("fault", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_fault_in_this_process_share_cancels_the_workers_queue(tmp_path, monkeypatch, fault):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    monkeypatch.setattr(records_mod, "PARALLEL_MIN", 10)
    monkeypatch.setattr(records_mod, "_workers", lambda: 2)
    parent, real = os.getpid(), records_mod._row_entries
    calls = []

    def fails_here(base, names, row):
        if os.getpid() == parent and not calls:
            calls.append(names)
            raise fault
        return real(base, names, row)
    monkeypatch.setattr(records_mod, "_row_entries", fails_here)
    if isinstance(fault, KeyboardInterrupt):           # Ctrl-C reaches the user, not a serial re-read
        with pytest.raises(KeyboardInterrupt):
            _outputs(runs, tmp_path / "a")
    else:                                              # an error: the caller reads them all itself
        assert _outputs(runs, tmp_path / "a") == _golden()
    assert len(calls) == 1


def test_a_submit_that_fails_midway_leaves_the_reading_to_the_caller(tmp_path, monkeypatch):
    from concurrent.futures import ProcessPoolExecutor

    runs = tmp_path / "runs"
    write_golden_runs(runs)
    monkeypatch.setattr(records_mod, "PARALLEL_MIN", 10)
    monkeypatch.setattr(records_mod, "_workers", lambda: 2)
    real_submit, submitted = ProcessPoolExecutor.submit, []

    def second_fails(self, *args):
        if submitted:
            raise RuntimeError("cannot schedule new futures after shutdown")
        submitted.append(real_submit(self, *args))
        return submitted[-1]
    monkeypatch.setattr(ProcessPoolExecutor, "submit", second_fails)
    assert _outputs(runs, tmp_path / "a") == _golden()        # read by the caller instead
    assert len(submitted) == 1                                 # one chunk had gone to the pool before the fault


def test_this_process_reads_less_itself_the_more_workers_there_are():
    shares = [records_mod._own_share(w) for w in (2, 3, 4, 8, 64)]
    assert shares[0] == 0.5 and shares == sorted(shares, reverse=True) and 0 <= shares[-1] < 0.05


def test_workers_that_cannot_start_leave_the_reading_to_the_caller(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_golden_runs(runs)
    monkeypatch.setattr(records_mod, "PARALLEL_MIN", 10)
    monkeypatch.setattr(records_mod, "_workers", lambda: 2)

    def no_processes(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")
    import concurrent.futures
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_processes)
    assert _outputs(runs, tmp_path / "a") == _golden()
