"""``run_all.py params`` end to end."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def run_cli(*args):
    return subprocess.run([sys.executable, "run_all.py", *args], cwd=REPO, capture_output=True, text=True)


def test_params_table_shows_measured_and_paper_figures():
    out = run_cli("params", "--backbone", "point_mae", "--method", "full")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "scanobjectnn_pb_t50_rs" in l)
    assert "22,093,327" in line and "22.1" in line
    assert "22,099,752" in out.stdout  # ModelNet40 row


def test_params_json_has_counts():
    out = run_cli("params", "--backbone", "point_mae", "--method", "full", "--dataset", "modelnet40", "--format", "json")
    rows = json.loads(out.stdout)
    assert rows == [{"backbone": "point_mae", "method": "full", "dataset": "modelnet40", "total": 22_099_752,
                     "trainable": 22_099_752, "with_grad": 22_099_752, "trainable_M": 22.1,
                     "paper_trainable_M": 22.1, "code": "official code"}]


def test_unknown_names_are_one_line_errors_listing_choices():
    for flag, value, valid in [("--backbone", "pointnet", "point_mae"), ("--method", "nope", "full"),
                               ("--dataset", "shapenet", "modelnet40")]:
        out = run_cli("params", flag, value)
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1
        assert value in out.stderr and valid in out.stderr


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0 and "params" in out.stdout


def test_params_rows_use_the_official_dataset_configs_and_mark_unsupported_combinations():
    out = run_cli("params", "--backbone", "point_mae,point_m2ae", "--method", "idpt_faithful,dapt_faithful",
                  "--format", "json", "--no-grad-check")
    rows = {(r["backbone"], r["method"], r["dataset"]): r for r in json.loads(out.stdout)}
    assert rows[("point_mae", "idpt_faithful", "scanobjectnn_obj_bg")]["trainable"] == 1_500_175
    assert rows[("point_mae", "idpt_faithful", "scanobjectnn_pb_t50_rs")]["trainable"] == 1_696_783
    assert rows[("point_mae", "dapt_faithful", "scanobjectnn_obj_only")]["trainable"] == 989_467
    assert rows[("point_mae", "dapt_faithful", "modelnet40")]["total"] == 22_894_740
    m2ae = rows[("point_m2ae", "idpt_faithful", "modelnet40")]
    assert m2ae["total"] is None and m2ae["code"] == "not supported"
