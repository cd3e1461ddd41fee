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


# ----------------------------------------------------------------------------- data and weights identity

def _tiny(root, *sets):
    from harness.config import load_config
    return load_config(REPO / "experiments" / "tiny.yaml", [f"data.root={root}", *sets])


def test_moving_data_keeps_the_run_id_and_new_content_makes_a_new_one(tmp_path):
    from harness.config import run_id
    from harness.data.synthetic import write_synthetic

    write_synthetic("scanobjectnn_obj_only", tmp_path / "a", num_classes=5, train_per_class=4, test_per_class=2, seed=0)
    before = run_id(_tiny(tmp_path / "a"))
    (tmp_path / "a").rename(tmp_path / "b")
    assert run_id(_tiny(tmp_path / "b")) == before            # moved: same run, still done
    h5 = sorted((tmp_path / "b").rglob("*.h5"))[0]
    data = bytearray(h5.read_bytes())
    data[-100] ^= 0xFF                                          # one byte of one file's content
    h5.write_bytes(bytes(data))
    assert run_id(_tiny(tmp_path / "b")) != before
    assert run_id(_tiny(tmp_path / "missing")) != before        # a folder that is gone is not "done"


def test_checkpoint_sha256_is_part_of_the_run_id(tmp_path):
    from harness.config import run_id

    (tmp_path / "w.pth").write_bytes(b"one")
    a = _tiny(tmp_path, f"model.pretrained={tmp_path / 'w.pth'}")
    (tmp_path / "w.pth").write_bytes(b"two")
    b = _tiny(tmp_path, f"model.pretrained={tmp_path / 'w.pth'}")
    assert a.model.pretrained_sha256 != b.model.pretrained_sha256 and run_id(a) != run_id(b)


def test_point_peft_without_pretrained_weights_refuses_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "run_all.py", "train", "experiments/tiny.yaml", "--set",
                          "model.method=point_peft", f"data.root={tmp_path}", "--print-config"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.pretrained" in lines[0] and "allow_random_init" in lines[0]


def test_submit_preflight_lists_missing_paths_and_submits_nothing(tmp_path):
    out = subprocess.run([sys.executable, "run_all.py", "submit", "experiments/paper.yaml", "--only",
                          "backbone=point_mae,dataset=modelnet40", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
                          "--logs", str(tmp_path / "logs")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "data.root:" in out.stderr and "model.pretrained:" in out.stderr and "nothing submitted" in out.stderr
    assert not (tmp_path / "logs").exists()


def test_status_asks_the_scheduler_once_for_many_jobs(tmp_path, monkeypatch):
    specs = matrix.expand(REPO / "experiments" / "smoke.yaml", runs_dir=tmp_path / "runs")
    for i, spec in enumerate(specs):
        (tmp_path / "runs" / spec.run_id).mkdir(parents=True)
        (tmp_path / "runs" / spec.run_id / "job.json").write_text(
            '{"executor": "slurm", "job_id": "7_%d", "folder": "%s"}' % (i, tmp_path))
    (tmp_path / "7_0_0_log.err").write_text("srun: error: node lost\nslurmstepd: CANCELLED AT 12:00\n")
    calls = []

    def ask(infos):
        calls.append(len(infos))
        return {"7_0": "CANCELLED", **{f"7_{i}": "PENDING" for i in range(1, len(specs))}}
    states = matrix.run_states(specs, ask)
    assert calls == [len(specs)]
    assert states[0].state == "failed" and "CANCELLED" in states[0].detail
    assert states[0].log == tmp_path / "7_0_0_log.err" and states[0].log_tail[-1] == "slurmstepd: CANCELLED AT 12:00"
    assert {s.state for s in states[1:]} == {"pending"}


def test_sacct_array_ranges_are_expanded():
    from harness import jobs
    assert jobs._parse_ids("12_[3-5,7%2]") == ["12_3", "12_4", "12_5", "12_7"]
    assert jobs._parse_ids("12_3") == ["12_3"]
