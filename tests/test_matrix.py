"""Experiment files -> run specs, filters, run ids, profiles and the sbatch dry run."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from harness import launch, matrix
from models.errors import BenchError, ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def exp(tmp_path):
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    return tmp_path / "experiments"


def test_paper_matrix_covers_the_paper_and_ids_are_stable():
    specs = matrix.expand(REPO / "experiments" / "paper.yaml")
    cells = {(s.cell["backbone"], s.cell["method"], s.cell["dataset"], s.cell["variant"]) for s in specs}
    assert ("point_mae", "point_peft", "scanobjectnn_pb_t50_rs", "aug") in cells
    assert ("point_bert", "full", "modelnet40", "plain") in cells
    assert not any(c[2] == "modelnet40" and c[3] == "aug" for c in cells)
    assert len(specs) == len({s.run_id for s in specs}) == 84
    again = matrix.expand(REPO / "experiments" / "paper.yaml")
    assert [s.run_id for s in again] == [s.run_id for s in specs]
    m2ae_mn = next(s for s in specs if s.cell["backbone"] == "point_m2ae" and s.cell["dataset"] == "modelnet40")
    assert m2ae_mn.config["train"]["label_smoothing"] == 0.3
    assert m2ae_mn.config["data"]["root"].endswith("modelnet40_normal_resampled")


def test_filters_select_cells_and_reject_unknown_values():
    path = REPO / "experiments" / "paper.yaml"
    f = matrix.parse_filters(["backbone=point_mae,dataset=scanobjectnn_pb_t50_rs"], "0-1")
    specs = matrix.expand(path, f)
    assert {(s.cell["backbone"], s.cell["dataset"]) for s in specs} == {("point_mae", "scanobjectnn_pb_t50_rs")}
    assert {s.cell["seed"] for s in specs} == {0, 1} and len(specs) == 8  # 2 methods x 2 variants x 2 seeds
    with pytest.raises(ConfigError, match="backbone=pointnet.*not in"):
        matrix.expand(path, matrix.parse_filters(["backbone=pointnet"], None))
    with pytest.raises(ConfigError, match="unknown axis 'color'"):
        matrix.parse_filters(["color=red"], None)


def test_seed_changes_the_run_id_but_runs_dir_does_not(exp, tmp_path):
    a = matrix.expand(exp / "smoke.yaml", runs_dir=tmp_path / "a")
    b = matrix.expand(exp / "smoke.yaml", runs_dir=tmp_path / "b")
    assert [s.run_id for s in a] == [s.run_id for s in b]


@pytest.mark.parametrize("text,message", [
    ("name: x\nbase: tiny.yaml\naxes: {backbone: [point_mae]\n", "malformed YAML"),
    ("name: x\nbase: tiny.yaml\naxes: {backbone: [point_mae]}\ncolour: red\n", "unknown key\\(s\\) \\['colour'\\]"),
    ("name: x\nbase: tiny.yaml\naxes: {optimizer: [adam]}\n", "unknown axis 'axes.optimizer'"),
    ("name: x\nbase: tiny.yaml\naxes: {backbone: [point_mae]}\nexclude: [{backbone: pointnet}]\n",
     "exclude\\[0\\].backbone: value\\(s\\) \\['pointnet'\\]"),
    ("name: x\naxes: {backbone: [point_mae]}\n", "missing required key 'base'"),
])
def test_bad_experiment_files_name_file_and_key(exp, text, message):
    path = write(exp / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as err:
        matrix.expand(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_axis_value_is_a_config_error_naming_the_key(exp):
    path = write(exp / "bad.yaml", "name: x\nbase: tiny.yaml\naxes: {backbone: [pointnet]}\n")
    with pytest.raises(BenchError, match="pointnet"):
        matrix.expand(path)


def test_profile_validation(tmp_path):
    with pytest.raises(launch.LaunchError, match="'partition' is required"):
        launch.load_profile(write(tmp_path / "p.yaml", "gpus_per_node: 1\n"))
    with pytest.raises(launch.LaunchError, match="unknown key\\(s\\) \\['gpu'\\]"):
        launch.load_profile(write(tmp_path / "p.yaml", "partition: a\ngpu: 1\n"))
    with pytest.raises(launch.LaunchError, match="not valid YAML"):
        launch.load_profile(write(tmp_path / "p.yaml", "partition: [a\n"))
    profile = launch.load_profile(REPO / "slurm" / "profiles" / "example-cluster.yaml")
    assert profile.partition


def test_sbatch_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    profile = launch.ClusterProfile(partition="gpu")
    with pytest.raises(launch.LaunchError, match="sbatch not found on PATH"):
        launch.make_executor("slurm", tmp_path, profile)


def test_dry_run_prints_array_script_and_submits_nothing(tmp_path):
    profile = write(tmp_path / "p.yaml", "partition: gpu\naccount: lab\ngpus_per_node: 1\narray_parallelism: 5\n"
                    "additional_parameters: {hint: nomultithread}\n")
    out = subprocess.run([sys.executable, "run_all.py", "submit", "experiments/paper.yaml", "--executor", "slurm",
                          "--profile", str(profile), "--dry-run", "--only", "backbone=point_mae",
                          "--runs-dir", str(tmp_path / "runs"), "--logs", str(tmp_path / "logs")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --array=0-29%5" in out.stdout  # 24 plain + 6 aug point_mae runs
    assert "#SBATCH --partition=gpu" in out.stdout and "#SBATCH --account=lab" in out.stdout
    assert "#SBATCH --hint=nomultithread" in out.stdout and "#SBATCH --signal=USR2@" in out.stdout
    assert "30 runs, 30 to submit" in out.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()
