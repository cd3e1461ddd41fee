"""Bad dataset folders give one-line DataErrors (file, found, expected, source), and
`data check` reports them and exits non-zero."""
import argparse
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO
from harness.cli import COMMANDS
from harness.cli import data as data_cli
from harness.data import DataError, build_dataset
from harness.data.synthetic import write_synthetic
from models.errors import BenchError


def raises_one_line(*fragments, call):
    with pytest.raises(DataError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def write_h5(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value


def scan_root(tmp_path, **arrays):
    root = tmp_path / "h5_files"
    write_h5(root / "main_split" / "training_objectdataset.h5", **arrays)
    return root


GOOD = dict(data=np.zeros((4, 2048, 3), np.float32), label=np.arange(4))


def test_data_error_is_a_bench_error():
    assert issubclass(DataError, BenchError)


@pytest.mark.parametrize("name,source", [
    ("scanobjectnn_obj_bg", "ScanObjectNN h5_files.zip"),
    ("modelnet40", "modelnet40_normal_resampled from the PointNet++/Point-BERT release"),
    ("modelnet40_h5", "modelnet40_ply_hdf5_2048 from the PointNet release"),
])
def test_missing_root(tmp_path, name, source):
    raises_one_line(str(tmp_path / "nope"), "no such directory", "expected", source,
                    call=lambda: build_dataset(name, tmp_path / "nope", "train"))


def test_missing_split_files(tmp_path):
    root = scan_root(tmp_path, **GOOD)
    raises_one_line("main_split/test_objectdataset.h5", "no such file",
                    "the OBJ_BG test file", "ScanObjectNN",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", root, "test"))
    mn = write_synthetic("modelnet40", tmp_path / "mn40", 1, 1, num_classes=1)
    (mn / "modelnet40_test.txt").unlink()
    raises_one_line("modelnet40_test.txt", "no such file", "list of shape ids",
                    call=lambda: build_dataset("modelnet40", mn, "test"))
    (tmp_path / "h5").mkdir()
    raises_one_line("test_files.txt", "no ply_data_test*.h5 files",
                    call=lambda: build_dataset("modelnet40_h5", tmp_path / "h5", "test"))


def test_h5_without_label(tmp_path):
    root = scan_root(tmp_path, data=GOOD["data"])
    raises_one_line("training_objectdataset.h5", "found keys ['data']", "expected key 'label'",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", root, "train"))


def test_not_an_h5_file(tmp_path):
    path = tmp_path / "h5_files" / "main_split" / "training_objectdataset.h5"
    path.parent.mkdir(parents=True)
    path.write_text("hello")
    raises_one_line(str(path), "h5py cannot open", "an HDF5 file",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", path.parents[1], "train"))


@pytest.mark.parametrize("shape", [(4, 1024, 3), (4, 2048, 6), (2048, 3)])
def test_wrong_data_shape(tmp_path, shape):
    root = scan_root(tmp_path, data=np.zeros(shape, np.float32), label=np.arange(4))
    raises_one_line(f"'data' of shape {shape}", "expected 'data' of shape (S, 2048, 3)",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", root, "train"))


def test_label_count_mismatch(tmp_path):
    root = scan_root(tmp_path, data=GOOD["data"], label=np.arange(3))
    raises_one_line("'label' of shape (3,)", "one per sample",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", root, "train"))


def test_label_out_of_range(tmp_path):
    root = scan_root(tmp_path, data=GOOD["data"], label=np.array([0, 3, 15, 2]))
    raises_one_line("training_objectdataset.h5", "'label'[2] = 15", "labels in 0..14",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", root, "train"))
    h5 = write_synthetic("modelnet40_h5", tmp_path / "mn", 1, 1, num_classes=2)
    with h5py.File(h5 / "ply_data_test0.h5", "a") as f:
        f["label"][0, 0] = 40
    raises_one_line("ply_data_test0.h5", "= 40", "labels in 0..39",
                    call=lambda: build_dataset("modelnet40_h5", h5, "test"))


def test_txt_with_bad_line(tmp_path):
    root = write_synthetic("modelnet40", tmp_path / "mn40", 1, 1, num_classes=1)
    txt = root / "airplane" / "airplane_0001.txt"
    lines = txt.read_text().splitlines()
    lines[4] = "0.1,0.2,oops,0.0,1.0,0.0"
    txt.write_text("\n".join(lines) + "\n")
    raises_one_line(f"{txt}:5", "line 5 '0.1,0.2,oops", "6 comma-separated numbers x,y,z",
                    call=lambda: build_dataset("modelnet40", root, "train", progress=False))
    lines[4] = "0.1,0.2,0.3,0.0,1.0"
    txt.write_text("\n".join(lines) + "\n")
    raises_one_line(":5", "line 5", call=lambda: build_dataset("modelnet40", root, "train",
                                                               progress=False))


def test_list_with_unknown_class_and_stale_cache(tmp_path):
    root = write_synthetic("modelnet40", tmp_path / "mn40", 1, 1, num_classes=2)
    build_dataset("modelnet40", root, "test", progress=False)
    (root / "modelnet40_test.txt").write_text("bathtub_0002\nairplane_0002\n")
    raises_one_line("modelnet40_test_8192pts_fps.dat", "found label 0 for sample 0", "expected 1",
                    "stale cache",
                    call=lambda: build_dataset("modelnet40", root, "test"))
    (root / "modelnet40_test.txt").write_text("airplane_0002\nspaceship_0001\n")
    raises_one_line("modelnet40_test.txt:2", "unknown class 'spaceship'",
                    call=lambda: build_dataset("modelnet40", root, "test"))


def test_cache_with_wrong_structure(tmp_path):
    root = write_synthetic("modelnet40", tmp_path / "mn40", 1, 1, num_classes=1)
    cache = root / "modelnet40_test_8192pts_fps.dat"
    cache.write_bytes(pickle.dumps([[np.zeros((1024, 6), np.float32)],
                                    [np.array([0], np.int32)]]))
    raises_one_line("sample 0 points of shape (1024, 6)", "(8192, 6) float32",
                    call=lambda: build_dataset("modelnet40", root, "test"))
    cache.write_bytes(b"not a pickle")
    raises_one_line("does not unpickle", call=lambda: build_dataset("modelnet40", root, "test"))


def test_unknown_name_split_and_option(tmp_path):
    raises_one_line("'shapenet'", "modelnet40_h5", call=lambda: build_dataset("shapenet", tmp_path,
                                                                              "train"))
    raises_one_line("'val'", "'train', 'test'",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", tmp_path, "val"))
    raises_one_line("unknown option 'npoints'", "permute",
                    call=lambda: build_dataset("scanobjectnn_obj_bg", tmp_path, "train",
                                               npoints=1024))


# ------------------------------------------------------------------ the CLI


def cli(*argv):
    parser = argparse.ArgumentParser(prog="run_all.py")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_check_passes_on_synthetic_with_allowed_mismatch(tmp_path, capsys):
    for name in ("scanobjectnn_pb_t50_rs", "modelnet40_h5", "modelnet40"):
        root = tmp_path / name
        assert cli("data", "synth", "--dataset", name, "--out", str(root), "--num-classes", "2",
                   "--train-per-class", "2", "--test-per-class", "1") == 0
        assert cli("data", "check", "--dataset", name, "--root", str(root)) == 1
        out = capsys.readouterr().out
        assert "expected the official" in out and "--allow-count-mismatch" in out
        assert out.rstrip().endswith("FAILED: 2 problem(s)")
        assert cli("data", "check", "--dataset", name, "--root", str(root),
                   "--allow-count-mismatch") == 0
        out = capsys.readouterr().out
        assert "| total" in out and "warning:" in out and out.rstrip().endswith("OK")
        assert cli("data", "check", "--dataset", name, "--root", str(root),
                   "--no-expect-official-counts", "--deep") == 0
        assert "warning:" not in capsys.readouterr().out


def test_check_fails_on_bad_folder(tmp_path, capsys):
    root = scan_root(tmp_path, data=GOOD["data"])  # no label key, no test file
    assert cli("data", "check", "--dataset", "scanobjectnn_obj_bg", "--root", str(root),
               "--no-expect-official-counts") == 1
    out = capsys.readouterr().out
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2
    assert "expected key 'label'" in errors[0] and "no such file" in errors[1]
    mn = write_synthetic("modelnet40", tmp_path / "mn40", 1, 1, num_classes=1)
    (mn / "airplane" / "airplane_0002.txt").unlink()
    assert cli("data", "check", "--dataset", "modelnet40", "--root", str(mn),
               "--allow-count-mismatch") == 1
    assert "1 of 1 shapes listed in modelnet40_test.txt are missing" in capsys.readouterr().out


@pytest.mark.skipif("data" not in COMMANDS, reason="'data' is not in harness.cli.COMMANDS yet")
def test_run_all_data_check_exits_non_zero(tmp_path):
    """Through the real entry point (one subprocess: importing torch takes seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, str(REPO / "run_all.py"), "data", "check", "--dataset",
                          "scanobjectnn_obj_bg", "--root", str(tmp_path / "missing")],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    errors = [ln for ln in bad.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "missing: no such directory" in errors[0]


def test_unwritable_dataset_folder_for_the_cache(tmp_path, monkeypatch):
    root = write_synthetic("modelnet40", tmp_path / "mn40", 1, 1, num_classes=1)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("harness.tempfiles.tempfile.mkstemp", refuse)
    raises_one_line("modelnet40_test_8192pts_fps.dat", "cannot write it (Permission denied)",
                    "writable dataset folder",
                    call=lambda: build_dataset("modelnet40", root, "test", progress=False))
