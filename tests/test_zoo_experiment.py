"""The zoo experiment: the matrix expands as documented, and its synthetic smoke version runs
through the local executor into the zoo tables and plot."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from harness import matrix
from models.peft import registry
from test_harness_executors import ensure_smoke_data

DATASETS = {"scanobjectnn_obj_bg", "scanobjectnn_obj_only", "scanobjectnn_pb_t50_rs", "modelnet40"}


def test_zoo_matrix_covers_methods_backbones_datasets_seeds():
    specs = matrix.expand(REPO / "experiments" / "zoo.yaml")
    cells = {(s.cell["backbone"], s.cell["method"], s.cell["dataset"], s.cell["variant"], s.cell["seed"]) for s in specs}
    assert len(cells) == len(specs)
    for backbone, method, dataset, variant, seed in cells:
        assert registry.get(method).supports(backbone)        # only combinations the registry allows
    for method in ("pointgst", "ppt", "gaprompt", "pointlora"):
        for variant in ("official", "protocol_st", "protocol_rot"):
            got = {(d, s) for b, m, d, v, s in cells if b == "point_mae" and m == method and v == variant}
            assert got == {(d, s) for d in DATASETS for s in range(5)}, (method, variant)
        assert {(d, s) for b, m, d, v, s in cells if m == method + "_faithful"} == \
            {(d, s) for d in DATASETS for s in range(5)}       # faithful: official variant, Point-MAE
    point_bert = {m for b, m, *_ in cells if b == "point_bert"}
    assert point_bert == {"full", "point_peft", "idpt", "dapt", "pointgst"}
    assert {m for b, m, *_ in cells} == set(registry.methods())   # every registered method


def test_zoo_recipes_reach_the_cells():
    by = {(s.cell["method"], s.cell["dataset"], s.cell["variant"]): s.config
          for s in matrix.expand(REPO / "experiments" / "zoo.yaml", {"seed": ["0"], "backbone": ["point_mae"]})}
    ppt = by[("ppt_faithful", "modelnet40", "official")]
    assert ppt["optim"]["lr"] == 1.0e-4 and ppt["train"]["augmentation"] == "scale_translate"
    assert by[("ppt", "scanobjectnn_pb_t50_rs", "official")]["train"]["augmentation"] == "rotate_y"
    ga = by[("gaprompt", "modelnet40", "official")]
    assert (ga["schedule"]["epochs"], ga["schedule"]["cosine_epochs"], ga["train"]["augmentation"]) == (401, 300, "rotate_y_batch")
    assert by[("gaprompt", "scanobjectnn_obj_bg", "official")]["model"]["method_options"]["propagation"] == "before"
    for method in ("full", "ppt", "gaprompt", "pointlora", "pointgst"):   # one protocol: same recipe for all
        cfg = by[(method, "modelnet40", "protocol_st")]
        assert (cfg["optim"]["lr"], cfg["schedule"]["epochs"], cfg["train"]["augmentation"],
                cfg["data"]["val_fraction"], cfg["train"]["vote"]["enabled"]) == (5.0e-4, 301, "scale_translate", 0.1, True)


def test_zoo_dry_run_lists_the_matrix():
    out = subprocess.run([sys.executable, "run_all.py", "submit", "experiments/zoo.yaml", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    n = len(matrix.expand(REPO / "experiments" / "zoo.yaml"))
    assert f"{n} runs, {n} to submit" in out.stdout


@pytest.mark.slow
def test_zoo_smoke_runs_locally_into_tables_and_plot(tmp_path):
    ensure_smoke_data()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "run_all.py", "submit", "experiments/zoo_smoke.yaml", "--executor", "local",
                          "--only", "variant=official", "--parallel", "2", "--wait",
                          "--runs-dir", str(tmp_path / "runs"), "--logs", str(tmp_path / "logs")],
                         cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "10 done" in run.stdout
    out = subprocess.run([sys.executable, "run_all.py", "zoo-tables", "--experiment", "zoo_smoke", "--runs",
                          str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "out" / "zoo.md").read_text()
    synthetic = text.split("## Synthetic data")[1]
    for method in ("full", "pointgst", "ppt", "gaprompt", "pointlora"):
        assert f"| {registry.get(method).display} " in synthetic
    assert synthetic.count("(n=2)") >= 5 * 2        # honest and legacy over both seeds
    assert synthetic.count("] (n=2)") == 2 * 4      # paired difference with its interval, both selections
    png = tmp_path / "out" / "plots" / "zoo_scanobjectnn_obj_bg_synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
