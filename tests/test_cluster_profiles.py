"""Cluster profiles: every key documented, and more GPUs per node means one task (DDP rank) per GPU."""
from __future__ import annotations

import re
import subprocess
import sys

import yaml

from conftest import REPO
from harness import launch

EXAMPLE = REPO / "slurm" / "profiles" / "example-cluster.yaml"


def test_example_profile_documents_every_key_the_loader_accepts(tmp_path):
    text = EXAMPLE.read_text()
    fields = list(launch.ClusterProfile.__dataclass_fields__)
    for key in fields:
        # each key is set (or shown commented out) under a comment that explains it
        match = re.search(rf"^((?:#[^\n]*\n)+)#? ?{key}:", text, re.M)
        assert match, f"{key} is not documented in {EXAMPLE.name}"
        assert "--" in match.group(1) or "sbatch" in match.group(1) or "SLURM" in match.group(1), key
    readme = (REPO / "slurm" / "README.md").read_text()
    for key in fields:
        assert f"| `{key}` |" in readme, f"{key} missing from slurm/README.md's table"
    # the example, with its commented keys switched on, is a valid profile
    on = re.sub(rf"^# ?(({'|'.join(fields)}):)", r"\1", text, flags=re.M)
    on = re.sub(r"^#(   - )", r"\1", on, flags=re.M)   # the setup lines
    (tmp_path / "all.yaml").write_text(on)
    profile = launch.load_profile(tmp_path / "all.yaml")
    assert set(yaml.safe_load(on)) == set(fields)
    assert profile.partition == "gpu" and len(profile.setup) == 2 and launch.tasks_per_node_of(profile) == 1


def test_more_gpus_per_node_means_one_task_per_gpu_in_the_sbatch_script(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("partition: gpu\ngpus_per_node: 2\n")
    out = subprocess.run([sys.executable, "run_all.py", "submit", "experiments/paper.yaml", "--executor", "slurm",
                          "--profile", str(profile), "--dry-run", "--only", "backbone=point_mae",
                          "--runs-dir", str(tmp_path / "runs"), "--logs", str(tmp_path / "logs")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --gpus-per-node=2" in out.stdout
    assert "#SBATCH --ntasks-per-node=2" in out.stdout


def test_tasks_per_node_in_the_profile_wins(tmp_path):
    one = launch.ClusterProfile(partition="gpu", gpus_per_node=4, tasks_per_node=1)
    script = launch.sbatch_script(one, tmp_path, 3)
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --ntasks-per-node=1" in script
    cpu_only = launch.ClusterProfile(partition="cpu", gpus_per_node=0)
    assert "#SBATCH --ntasks-per-node=1" in launch.sbatch_script(cpu_only, tmp_path, 1)
