"""Data fingerprints: one walk of a data root per matrix expansion, file contents hashed once
per process while their stat is unchanged, a changed file changes the fingerprint."""
from __future__ import annotations

import os
import shutil

import pytest

from conftest import REPO
from harness import fingerprint, matrix


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data" / "h5_files"
    (root / "main_split").mkdir(parents=True)
    for name in ("training_objectdataset.h5", "test_objectdataset.h5"):
        (root / "main_split" / name).write_bytes(os.urandom(4096))
    (root / "README").write_text("split files\n")
    return root


@pytest.fixture
def counted(monkeypatch):
    """Counts of tree walks and of files whose content is read, from an empty digest memo."""
    calls = {"walk": 0, "read": 0}
    walk = fingerprint._walk

    def counting_walk(root):
        calls["walk"] += 1
        return walk(root)

    def counting_open(path, *args, **kwargs):
        calls["read"] += 1
        return open(path, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "_digests", {})
    monkeypatch.setattr(fingerprint, "_walk", counting_walk)
    monkeypatch.setattr(fingerprint, "open", counting_open, raising=False)   # the module's own open()
    return calls


def _experiment(tmp_path, root, seeds: int):
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "fp.yaml"
    path.write_text(f"""name: fp
base: recipes/official.yaml
axes:
  backbone: [point_bert, point_mae, point_m2ae]
  method: [full, point_peft]
  dataset: [scanobjectnn_obj_bg]
  seed: {list(range(seeds))}
set:
  model.allow_random_init: true
  data.root: {root}
""")
    return path


def test_expanding_a_matrix_walks_each_root_once_and_reads_each_file_once(tmp_path, data_root, counted):
    path = _experiment(tmp_path, data_root, seeds=20)
    specs = matrix.expand(path)
    assert len(specs) == 120
    fps = {s.config["data"]["fingerprint"] for s in specs}
    assert len(fps) == 1 and fps != {fingerprint.MISSING}
    # one walk and one read of each of the 3 files, not one per run
    assert counted == {"walk": 1, "read": 3}
    again = matrix.expand(path)          # a later expansion: the root is walked (stat only) again,
    assert counted == {"walk": 2, "read": 3}   # but unchanged files are not read again
    assert [s.run_id for s in again] == [s.run_id for s in specs]


def test_a_changed_file_changes_the_fingerprint_and_a_moved_root_keeps_it(tmp_path, data_root, counted):
    before = fingerprint.data_fingerprint(data_root)
    target = data_root / "main_split" / "test_objectdataset.h5"
    st = target.stat()
    target.write_bytes(os.urandom(4096))                       # same size, new content
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = fingerprint.data_fingerprint(data_root)
    assert changed != before
    moved = tmp_path / "elsewhere"
    shutil.move(str(data_root), moved)
    assert fingerprint.data_fingerprint(moved) == changed
    assert fingerprint.data_fingerprint(tmp_path / "absent") == fingerprint.MISSING
