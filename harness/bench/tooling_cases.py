"""Bench part ``tooling``: how fast the harness plans 1,000 runs, reports their status from a
SLURM scheduler, and tabulates 100,000 results.

* matrix: a temporary experiment file whose axes (every registered backbone x method x the
  known datasets x seeds, trimmed by ``exclude`` to exactly 1,000 cells) sit on
  ``experiments/recipes/official.yaml``; timed: what ``run_all.py submit --dry-run`` computes:
  ``harness.matrix.expand``, ``matrix.run_state`` of every run (which need submitting) and
  ``harness.launch.sbatch_script`` for the job array (no sbatch call; the table not printed).
* tables: 100,000 synthetic result records (schema of ``harness.results``, the size of a real
  record with its resolved config; 2% failed, 5% on synthetic data) written to a temporary runs
  folder (not timed); timed: load_records_and_rows + compute (collect, summarize, paired) +
  load_reference + markdown (what ``run_all.py tables`` computes; plots and file writes are not
  included), plus what the command pays before that: importing the CLI with the ``tables``
  parser, measured in a fresh interpreter (``python -c``; the interpreter's own start-up
  excluded). Twice per repeat: a first run (no row cache: every record parsed, the cache
  written) and again (unchanged records from the row cache, ``harness.results.rowcache``); both
  are scored. The page cache is warm (the files were just written).

* status: the same 1,000 runs, each with a ``job.json`` of a SLURM array task; ``squeue`` and
  ``sacct`` are stand-in scripts on PATH that answer for every job and count their calls; timed:
  ``matrix.run_states`` with ``harness.jobs.scheduler_states`` (what ``run_all.py status``
  computes). Target: under 3 s, with a handful of scheduler calls, not one per job.

A part whose harness modules are missing or broken is reported as ``skipped: <reason>``.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

from harness.bench.common import ROOT, median, short_error

MATRIX_RUNS = 1000
TABLE_RECORDS = 100000
STATUS_TARGET_S = 3.0
TABLES_TARGET_S = 5.0
BASE_RECIPE = ROOT / "experiments" / "recipes" / "official.yaml"
PROFILE = ROOT / "slurm" / "profiles" / "example-cluster.yaml"
REFERENCE = ROOT / "results" / "reference" / "paper.csv"


def _entry(name: str, status: str, notes: str, value: float | None = None, values: dict | None = None,
           repeats: list[float] | None = None) -> dict:
    kind = "status" if "status" in name else "matrix" if "matrix" in name else "tables"
    return {"name": name, "id": kind, "status": status, "value": value, "unit": "s", "values": values or {},
            "repeats": repeats or [], "notes": notes}


def _matrix_yaml(n_runs: int) -> tuple[str, int]:
    """Experiment YAML text with exactly ``n_runs`` cells, and its cell count."""
    import yaml

    from harness.catalog import DATASETS
    from models.classifier import BACKBONES, METHODS

    backbones, methods, datasets = list(BACKBONES), list(METHODS), list(DATASETS)
    pairs = [(b, m) for b in backbones for m in methods if METHODS[m].supports(b)]
    # the combinations no method supports are excluded, as an experiment file must
    exclude = [{"backbone": b, "method": m} for b in backbones for m in methods if (b, m) not in pairs]
    per_seed = len(pairs) * len(datasets)
    seeds = math.ceil(n_runs / per_seed)
    extra = seeds * per_seed - n_runs
    dropped = 0
    for b, m in pairs:  # drop the last seed of the first `extra` (backbone, method, dataset) cells
        for d in datasets:
            if dropped < extra:
                exclude.append({"backbone": b, "method": m, "dataset": d, "seed": seeds - 1})
                dropped += 1
    doc = {"name": "bench-matrix", "description": f"{n_runs}-run matrix for run_all.py bench",
           "base": str(BASE_RECIPE), "set": {"model.allow_random_init": True},
           "axes": {"backbone": backbones, "method": methods, "dataset": datasets, "seed": list(range(seeds))},
           "exclude": exclude}
    return yaml.safe_dump(doc, sort_keys=False), seeds * per_seed - extra


def bench_matrix(repeats: int, n_runs: int | None = None) -> dict:
    n_runs = n_runs or MATRIX_RUNS
    name = f"expand + dry-run submit of a {n_runs:,}-run matrix"
    try:
        from harness import launch, matrix
        if not BASE_RECIPE.is_file():
            return _entry(name, "skipped", f"skipped: {BASE_RECIPE.relative_to(ROOT)} not found")
        text, cells = _matrix_yaml(n_runs)
        profile = launch.load_profile(PROFILE)
    except Exception as err:  # noqa: BLE001 - harness pieces still being written
        return _entry(name, "skipped", f"skipped: {short_error(err)}")
    run_state = getattr(matrix, "run_state", None)
    scheduler = getattr(launch, "scheduler_state", None)
    times, expand_t, state_t, script_t = [], [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
            path = Path(tmp) / "bench-matrix.yaml"
            path.write_text(text)
            for _ in range(repeats):
                t0 = time.perf_counter()
                specs = matrix.expand(path, None, runs_dir=Path(tmp) / "runs")
                t1 = time.perf_counter()
                todo = specs
                if run_state is not None:  # what `submit --dry-run` does: which runs need submitting
                    todo = [s for s in specs if run_state(s, scheduler).needs_submission]
                t2 = time.perf_counter()
                script = launch.sbatch_script(profile, Path(tmp) / "submitit", len(todo), job_name="bench-matrix")
                t3 = time.perf_counter()
                times.append(t3 - t0)
                expand_t.append(t1 - t0)
                state_t.append(t2 - t1)
                script_t.append(t3 - t2)
    except Exception as err:  # noqa: BLE001
        return _entry(name, "skipped", f"skipped: the matrix tooling failed: {short_error(err)}")
    if len(specs) != n_runs or len({s.run_id for s in specs}) != n_runs:
        return _entry(name, "error", f"error: expected {n_runs} distinct runs, expand gave {len(specs)} "
                      f"({len({s.run_id for s in specs})} distinct run ids)")
    array = "--array" in script or "#SBATCH --array" in script
    return _entry(name, "ok", f"harness.matrix.expand ({cells} cells: registered backbones x methods x "
                  f"datasets x seeds on experiments/recipes/official.yaml)"
                  + (" + matrix.run_state of each run" if run_state is not None else "")
                  + f" + harness.launch.sbatch_script for the array of {len(todo)} "
                  f"({'has' if array else 'NO'} --array line); no sbatch call, run table not printed; "
                  f"median of {repeats}",
                  value=median(times), repeats=times,
                  values={"expand_s": median(expand_t), "run_state_s": median(state_t),
                          "sbatch_script_s": median(script_t), "runs": len(specs)})


def _synthetic_config(backbone: str, method: str, dataset: str, seed: int, variant: str) -> dict:
    """A resolved config in the shape ``harness.train`` records (about 1.4 KB of JSON, as a
    real record's): the tables parse it with the rest of the record."""
    return {"experiment": "bench-tables", "variant": variant,
            "model": {"backbone": backbone, "method": method, "method_options": {}, "backbone_options": {},
                      "pretrained": f"ckpts/{backbone}/pretrain.pth", "pretrained_kind": "pretrain",
                      "allow_missing": [], "pretrained_sha256": "0" * 64, "allow_random_init": False},
            "data": {"dataset": dataset, "root": f"data/{dataset}", "synthetic": False, "npoints": 2048,
                     "point_all": 2048, "use_normals": False, "permute_train": True, "num_workers": 8,
                     "val_fraction": 0.0, "fingerprint": "0123456789abcdef"},
            "optim": {"lr": 0.0005, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-08, "grad_clip": 10.0},
            "schedule": {"epochs": 300, "cosine_epochs": 290, "warmup_epochs": 10, "warmup_lr": 1e-06,
                         "min_lr": 1e-06, "lag": True},
            "train": {"batch_size": 32, "eval_batch_size": 64, "label_smoothing": 0.0, "amp": "bf16",
                      "compile": False, "eval_every": 1, "eval_start": 0,
                      "vote": {"enabled": dataset == "modelnet40", "votes": 10, "repeats": 1, "weights": "best_test"},
                      "augmentation": "scale_translate", "seed": seed, "engine": "ddp", "zero_stage": 0,
                      "deterministic": False, "freeze_bn": False, "disable_dropout": False,
                      "max_steps_per_epoch": None},
            "output": {"runs_dir": "/shared/project/results/runs", "tensorboard": False, "progress": None,
                       "keep_best": True},
            "debug": {"nan_loss_at_step": None}}


def synthetic_record(i: int, rng: random.Random, fields: tuple) -> dict:
    """One result record (schema 2 of harness.results) with plausible values and the size of a
    real one (its resolved config, package versions and class counts included)."""
    backbones, methods = ("point_bert", "point_mae", "point_m2ae"), ("full", "point_peft")
    datasets = ("scanobjectnn_obj_bg", "scanobjectnn_obj_only", "scanobjectnn_pb_t50_rs", "modelnet40")
    backbone, method, dataset = backbones[i % 3], methods[(i // 3) % 2], datasets[(i // 6) % 4]
    seed = i // 24
    failed = rng.random() < 0.02
    acc = 80 + 10 * rng.random()
    variant = "aug" if i % 7 == 0 else ""
    classes = 40 if dataset == "modelnet40" else 15
    rec = {"schema": 2, "run_id": f"{backbone}-{method}-{dataset}-s{seed}-{i:010x}",
           "setup_id": f"{backbone}-{method}-{dataset}-{i % 7 == 0}", "compute_time_s": 3600 * rng.random(),
           "seconds_per_epoch": 12 * rng.random(),
           "data": {"train": 11416, "val": 0, "test": 2882, "npoints": 2048, "point_all": 2048,
                    "fingerprint": "0123456789abcdef", "num_classes": classes,
                    "class_counts": {"train": [761] * classes, "test": [192] * classes}},
           "pretrained": {"sha256": "0" * 64, "loaded": 100, "missing": 2, "skipped": 0},
           "status": "failed" if failed else "done", "backbone": backbone, "method": method,
           "dataset": dataset, "variant": variant,
           "data_source": "synthetic" if rng.random() < 0.05 else "official", "seed": seed,
           "experiment": "bench-tables",
           "metrics": None if failed else {
               "acc_last": acc - 1, "acc_best_test": acc, "best_test_epoch": rng.randrange(300),
               "acc_best_val": None, "best_val_epoch": None,
               "acc_vote": acc + 0.3 if dataset == "modelnet40" else None},
           "params": {"total": 22_100_000, "trainable": 22_100_000 if method == "full" else 700_000},
           "epochs": 301, "wall_time_s": 3600 * rng.random(), "train_samples_per_s": 100 * rng.random(),
           "peak_memory_bytes": int(4e9 * rng.random()), "device": "cuda", "world_size": 1,
           "git_commit": "0" * 40, "git_dirty": False,
           "packages": {"python": "3.11.7", "torch": "2.13.0", "numpy": "2.4.6", "submitit": "1.5.4",
                        "pyyaml": "6.0.4", "h5py": "3.16.0", "tqdm": "4.70.1", "tensorboard": None,
                        "pandas": "3.1.1", "deepspeed": None},
           "config": _synthetic_config(backbone, method, dataset, seed, variant),
           "config_hash": f"{i:064x}", "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-01T01:00:00Z",
           "kernels": {"fps": "pointnet2_ops", "knn": "knn_cuda"},
           "error": {"type": "RuntimeError", "message": "synthetic failure"} if failed else None}
    for key in fields:  # keep up with schema additions: unknown fields are present as null
        rec.setdefault(key, None)
    return rec


IMPORT_PROBE = ("import time; t = time.perf_counter(); from harness.cli import build_parser; "
                "build_parser('tables'); import sys; print(time.perf_counter() - t, 'torch' in sys.modules)")


def tables_import_s() -> tuple[float, bool]:
    """(seconds, torch imported) of importing what ``run_all.py tables`` imports before it reads
    a record, in a fresh interpreter (the median of 3)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        runs.append((float(out[0]), out[1] == "True"))
    return median([t for t, _ in runs]), any(imported for _, imported in runs)


def bench_tables(repeats: int, n_records: int | None = None) -> dict:
    n_records = n_records or TABLE_RECORDS
    name = f"tables from {n_records:,} result records"
    try:
        from harness import results
        from harness.results import rowcache
        fields = tuple(getattr(results, "RECORD_FIELDS", ()))
    except Exception as err:  # noqa: BLE001
        return _entry(name, "skipped", f"skipped: {short_error(err)}")
    rng = random.Random(0)
    times, stages, again, again_stages = [], [], [], []
    try:
        import_s, torch_imported = tables_import_s()
        with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
            runs = Path(tmp) / "runs"
            t_write = time.perf_counter()
            for i in range(n_records):
                rec = synthetic_record(i, rng, fields)
                folder = runs / rec["run_id"]
                folder.mkdir(parents=True)
                (folder / "result.json").write_text(json.dumps(rec))
            # on disk before the timing, as a runs folder written by earlier jobs is: the kernel's
            # write-back of 100,000 fresh files would otherwise compete with it for the cores
            if hasattr(os, "sync"):
                os.sync()
            t_write = time.perf_counter() - t_write
            cache_file = runs / rowcache.FILE
            for _ in range(repeats):
                for phase in ("first", "again"):
                    # the previous run's records and tables are freed here, not inside the next timing
                    # (about 0.6 s for 100,000 records): every run times the same work
                    records = rows = computed = text = None
                    if phase == "first":
                        cache_file.unlink(missing_ok=True)   # a first run: no row cache yet
                    t0 = time.perf_counter()
                    records, rows, _ = results.load_records_and_rows(runs, results.tables.record_row, cache=True)
                    t1 = time.perf_counter()
                    computed = results.compute(records, rows=rows)
                    reference = results.load_reference(REFERENCE)
                    t2 = time.perf_counter()
                    text = computed.markdown(reference)
                    t3 = time.perf_counter()
                    (times if phase == "first" else again).append(import_s + t3 - t0)
                    (stages if phase == "first" else again_stages).append((t1 - t0, t2 - t1, t3 - t2))
                    if phase == "first" and not cache_file.is_file():
                        return _entry(name, "error", "error: the first run wrote no row cache")
    except Exception as err:  # noqa: BLE001
        return _entry(name, "skipped", f"skipped: the results tooling failed: {short_error(err)}")
    if len(rows) != n_records or "|" not in text:
        return _entry(name, "error", f"error: tabulated {len(rows)} of {n_records} records")
    def median_at(xs: list[float]) -> int:   # the repeat whose time is the median: its stages
        return sorted(range(len(xs)), key=xs.__getitem__)[len(xs) // 2]
    pick, pick_again = median_at(times), median_at(again)
    verdict = {True: "pass", False: "fail"}
    return _entry(name, "ok", f"the CLI's imports for tables (fresh interpreter, {import_s:.2f} s, torch "
                  f"{'imported' if torch_imported else 'not imported'}) + harness.results load_records_and_rows + compute (setups, "
                  f"paired statistics) + load_reference + markdown, on records of a real one's size; a first run "
                  f"(no row cache: every record parsed, the cache written) {median(times):.2f} s, again "
                  f"(unchanged records from the row cache) {median(again):.2f} s; records synced to disk, warm page cache; plots and "
                  f"file writes excluded; median of {repeats}; "
                  f"target < {TABLES_TARGET_S:g} s: first {verdict[median(times) < TABLES_TARGET_S]}, "
                  f"again {verdict[median(again) < TABLES_TARGET_S]}",
                  value=median(times), repeats=times,
                  values={"import_s": import_s, "load_records_s": stages[pick][0], "collect_summarize_s": stages[pick][1],
                          "render_markdown_s": stages[pick][2], "records": len(rows),
                          "again_s": median(again), "again_repeats": again,
                          "again_load_records_s": again_stages[pick_again][0],
                          "again_collect_summarize_s": again_stages[pick_again][1],
                          "write_records_untimed_s": t_write})


FAKE_SCHEDULER = """#!/bin/sh
# stand-in for squeue / sacct: counts its calls, answers every array task of job 4242
echo "$0" >> "{calls}"
case "$0" in
  *squeue) i=0; while [ $i -lt {n} ]; do echo "4242_$i|RUNNING"; i=$((i+1)); done ;;
  *sacct) ;;
esac
"""


def bench_status(repeats: int, n_runs: int | None = None) -> dict:
    n_runs = n_runs or MATRIX_RUNS
    name = f"status of a {n_runs:,}-run matrix on SLURM (batched scheduler calls)"
    try:
        import os

        from harness import jobs, matrix
        text, _ = _matrix_yaml(n_runs)
    except Exception as err:  # noqa: BLE001
        return _entry(name, "skipped", f"skipped: {short_error(err)}")
    times, calls_per = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
            tmp = Path(tmp)
            (tmp / "bench-matrix.yaml").write_text(text)
            specs = matrix.expand(tmp / "bench-matrix.yaml", None, runs_dir=tmp / "runs")
            for i, spec in enumerate(specs):
                folder = tmp / "runs" / spec.run_id
                folder.mkdir(parents=True)
                (folder / "job.json").write_text(json.dumps(
                    {"executor": "slurm", "job_id": f"4242_{i}", "folder": str(tmp / "logs")}))
            bin_dir = tmp / "bin"
            bin_dir.mkdir()
            calls = tmp / "calls.txt"
            for tool in ("squeue", "sacct"):
                (bin_dir / tool).write_text(FAKE_SCHEDULER.format(calls=calls, n=len(specs)))
                (bin_dir / tool).chmod(0o755)
            old_path = os.environ.get("PATH", "")
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old_path}"
            try:
                for _ in range(repeats):
                    calls.write_text("")
                    t0 = time.perf_counter()
                    states = matrix.run_states(specs, jobs.scheduler_states)
                    times.append(time.perf_counter() - t0)
                    calls_per.append(len(calls.read_text().splitlines()))
            finally:
                os.environ["PATH"] = old_path
    except Exception as err:  # noqa: BLE001
        return _entry(name, "skipped", f"skipped: the status tooling failed: {short_error(err)}")
    running = sum(s.state == "running" for s in states)
    if running != len(specs):
        return _entry(name, "error", f"error: {running} of {len(specs)} runs read as running")
    ok = median(times) < STATUS_TARGET_S
    return _entry(name, "ok", f"matrix.run_states + harness.jobs.scheduler_states over {len(specs)} job.json files; "
                  f"stand-in squeue/sacct on PATH; {max(calls_per)} scheduler call(s) per status; median of {repeats}; "
                  f"target < {STATUS_TARGET_S:g} s: {'pass' if ok else 'fail'}", value=median(times), repeats=times,
                  values={"scheduler_calls": max(calls_per), "runs": len(specs)})


def run_tooling(quick: bool, log=print) -> list[dict]:
    repeats = 1 if quick else 3
    entries = []
    # --quick: tables from a tenth of the records (writing 100,000 takes ~30 s); that target is then
    # scored not-measured
    tables = (lambda r: bench_tables(r, n_records=TABLE_RECORDS // 10)) if quick else bench_tables
    for fn in (bench_matrix, bench_status, tables):
        entry = fn(repeats)
        log(f"tooling: {entry['name']}: " + (f"{entry['value']:.3f} s" if entry["value"] is not None
                                              else entry["notes"]))
        entries.append(entry)
    return entries
