"""Bad run files: `status` and `tables` name the file, skip it, carry on, exit non-zero."""
from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

from conftest import REPO
from harness import matrix
from harness.cli import main
from test_results import record, write_runs

SMOKE = REPO / "experiments" / "smoke.yaml"


def cli(*args):
    """run_all.py in this process (as a user runs it, minus the interpreter start)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def bad_list(path):
    path.write_text("[1, 2]")
    return "expected a JSON object, got a JSON list"


def bad_string_accuracy(path):
    r = record("x", seed=3)
    r["metrics"]["acc_best_test"] = "88.1"
    path.write_text(json.dumps(r))
    return "metrics.acc_best_test is '88.1', expected a number"


def bad_nan_accuracy(path):
    r = record("x", seed=3)
    path.write_text(json.dumps(r).replace('"acc_best_test": 85.0', '"acc_best_test": NaN'))
    return "metrics.acc_best_test is nan, not a finite accuracy"


def bad_directory(path):
    path.mkdir()
    return "is a directory, expected a JSON file"


def bad_binary(path):
    path.write_bytes(b"\x89PNG\x00\xff\xfe")
    return "bad JSON"


BAD = {"list": bad_list, "string accuracy": bad_string_accuracy, "nan accuracy": bad_nan_accuracy,
       "directory": bad_directory, "binary": bad_binary}


@pytest.fixture
def runs(tmp_path):
    """A smoke matrix's run folders: one good done record, the others as each test makes them."""
    specs = matrix.expand(SMOKE, runs_dir=tmp_path / "runs")
    good = record(specs[0].run_id, seed=0)
    good["config"] = specs[0].config
    good["config_hash"] = __import__("harness.config", fromlist=["x"]).config_hash(
        __import__("harness.config", fromlist=["x"]).config_from_dict(specs[0].config))
    write_runs(tmp_path / "runs", [good])
    return tmp_path / "runs", specs


@pytest.mark.parametrize("kind", list(BAD))
def test_tables_and_status_name_a_bad_record_skip_it_and_exit_1(runs, tmp_path, kind):
    folder, specs = runs
    bad = folder / specs[1].run_id / "result.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    message = BAD[kind](bad)
    out = cli("tables", "--runs", folder, "--out", tmp_path / "out", "--no-plots")
    assert out.returncode == 1, out.stderr
    assert f"skipped: {bad}: {message}" in out.stderr and "Traceback" not in out.stderr
    assert "1 done runs in 1 setups" in out.stdout           # the good record still counts
    status = cli("status", SMOKE, "--runs-dir", folder)
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert str(bad) in status.stderr and "bad record" in status.stdout and "1 done" in status.stdout


def test_null_times_and_a_string_error_are_tabulated_not_fatal(tmp_path):
    ok = record("a", seed=0)
    ok.update(wall_time_s=None, compute_time_s=None, seconds_per_epoch=None, start_time=None, end_time=None)
    failed = record("b", status="failed", seed=1)
    failed["error"] = "killed by the OOM killer"
    runs = write_runs(tmp_path / "runs", [ok, failed])
    out = cli("tables", "--runs", runs, "--out", tmp_path / "out", "--no-plots")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "killed by the OOM killer" in text and "85.00 (n=1" in text


def test_binary_metrics_csv_is_named_by_tables_and_harmless_to_status(tmp_path):
    r = record("s", data_source="synthetic", setup="Z")
    runs = write_runs(tmp_path / "runs", [r])
    (runs / "s" / "metrics.csv").write_bytes(b"\xff\xfe\x00binary\x00")
    out = cli("tables", "--runs", runs, "--out", tmp_path / "out", "--run-plots")
    assert out.returncode == 1 and f"skipped: {runs / 's' / 'metrics.csv'}: not a readable metrics table" in out.stderr
    assert matrix.epochs_logged(runs / "s") >= 0


def test_job_json_without_job_id_is_named_by_status(runs):
    folder, specs = runs
    job = folder / specs[2].run_id / "job.json"
    job.parent.mkdir(parents=True)
    job.write_text(json.dumps({"executor": "slurm", "folder": "x"}))
    status = cli("status", SMOKE, "--runs-dir", folder)
    assert status.returncode == 1 and f"skipped: {job}: no 'job_id'" in status.stderr
    assert "Traceback" not in status.stderr and "not started" in status.stdout
