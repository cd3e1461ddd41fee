"""`run_all.py demo`: synthetic data -> runs in this process with visible progress -> tables."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys

import yaml

from conftest import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"


def mini_experiment(tmp_path):
    """The smoke matrix cut to Point-MAE x {full, Point-PEFT}, 2 epochs of 2 steps, own data root."""
    exp = tmp_path / "experiments"
    shutil.copytree(REPO / "experiments", exp)
    smoke = yaml.safe_load(SMOKE.read_text())
    smoke["axes"]["backbone"] = ["point_mae"]
    smoke["set"].update({"schedule.epochs": 2, "schedule.cosine_epochs": 1, "train.max_steps_per_epoch": 2})
    smoke["rules"][0]["set"]["data.root"] = str(tmp_path / "synthetic")
    rules = []
    for rule in smoke["rules"]:   # keep the Point-MAE rules, naming only Point-MAE
        backbones = rule["when"].get("backbone", "point_mae")
        if "point_mae" in ([backbones] if isinstance(backbones, str) else backbones):
            rules.append({**rule, "when": {**rule["when"], **({"backbone": "point_mae"} if "backbone" in rule["when"] else {})}})
    smoke["rules"] = rules
    (exp / "mini.yaml").write_text(yaml.safe_dump(smoke))
    return exp / "mini.yaml"


def demo(experiment, out):
    return subprocess.run([sys.executable, "run_all.py", "demo", "--experiment", str(experiment), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_demo_shows_progress_writes_tables_and_skips_done_runs(tmp_path):
    experiment, out = mini_experiment(tmp_path), tmp_path / "out"
    first = demo(experiment, out)
    assert first.returncode == 0, first.stdout + first.stderr
    text = first.stdout
    assert f"wrote synthetic scanobjectnn_obj_bg to {tmp_path / 'synthetic'}" in text
    assert "2 runs in" in text and "0 already done, 2 to train here" in text
    # which run, how far, how long: a header per run, a line per epoch with its time, a closing line
    for i, method in ((1, "full"), (2, "point_peft")):
        assert re.search(rf"^\[run {i}/2, \d+ s\] backbone point_mae, dataset scanobjectnn_obj_bg, method {method}, seed 0$", text, re.M)
        assert re.search(rf"^\[run {i}/2\] done in \d+ s$", text, re.M)
    epochs = re.findall(r"^\[point_mae-\S+\] epoch (\d), .*, (\d+\.\d) s$", text, re.M)
    assert [e for e, _ in epochs] == ["0", "1", "0", "1"]
    assert re.search(r"^demo finished in \d+ s \(2 trained, 0 skipped as done, 0 failed\)$", text, re.M)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert rows and (out / "tables.md").is_file()
    assert sorted(p.name for p in (out / "runs").glob("*/result.json")) == ["result.json"] * 2
    # the closing note names the demo's own plots (its runs, their learning curves), which exist
    plots_line = re.search(r"^  plots: +(.*)$", text, re.M).group(1).split(", ")
    assert {"plots/runs.png", "plots/learning_curves.png"} <= set(plots_line)
    assert all((out / name).is_file() for name in plots_line)

    again = demo(experiment, out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 already done, 0 to train here" in again.stdout and "[run " not in again.stdout
