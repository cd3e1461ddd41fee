"""Synthetic sets are written in the official h5 layouts and read back by the real loaders."""
import json
import time

import h5py
import numpy as np
import pytest
import torch

from harness.data import DATASET_NAMES, build_dataset
from harness.data.base import META_DIR
from harness.data.scanobjectnn import VARIANTS
from harness.data.synthetic import write_synthetic

SCAN = [n for n in DATASET_NAMES if n.startswith("scanobjectnn")]


def test_dataset_names():
    assert DATASET_NAMES == ("scanobjectnn_obj_bg", "scanobjectnn_obj_only",
                             "scanobjectnn_pb_t50_rs", "modelnet40", "modelnet40_h5")


@pytest.mark.parametrize("name", SCAN)
def test_scanobjectnn_round_trip(name, tmp_path):
    root = write_synthetic(name, tmp_path / "h5_files", train_per_class=3, test_per_class=2,
                           seed=1, num_classes=4)
    v = VARIANTS[name]
    for split, per_class in (("train", 3), ("test", 2)):
        path = root / v.folder / v.files[split]
        with h5py.File(path) as f:
            assert sorted(f) == ["data", "label", "mask"]
            assert f["data"].dtype == np.float32 and f["data"].shape == (4 * per_class, 2048, 3)
            assert f["label"].shape == (4 * per_class,)
            assert f["mask"].shape == (4 * per_class, 2048)
            mask, stored = f["mask"][()], f["data"][()]
        assert ((mask == -1).any()) == (name != "scanobjectnn_obj_only")
        ds = build_dataset(name, root, split)
        assert len(ds) == 4 * per_class and ds.num_classes == 15
        assert ds.class_counts() == [per_class] * 4 + [0] * 11
        pts, label = ds[0]
        assert pts.dtype == torch.float32 and pts.shape == (2048, 3)
        assert label.dtype == torch.int64 and label.ndim == 0
        if split == "test":  # file order, not normalised
            assert np.array_equal(pts.numpy(), stored[0])
        else:  # a fresh permutation of the stored points on every access
            assert not torch.equal(pts, ds[0][0])
            assert torch.equal(pts.sort(0).values, torch.from_numpy(stored[0]).sort(0).values)
    # a root that is the variant folder itself is accepted too
    assert len(build_dataset(name, root / v.folder, "test")) == 8


def test_modelnet40_h5_round_trip(tmp_path):
    root = write_synthetic("modelnet40_h5", tmp_path / "modelnet40_ply_hdf5_2048",
                           train_per_class=2, test_per_class=1, num_classes=40,
                           rows_per_file=32)
    lists = (root / "train_files.txt").read_text().split()
    meta = (META_DIR / "modelnet40_ply_hdf5_2048_meta" / "train_files.txt").read_text().split()
    assert lists == meta[:3]  # same lines as the release's list, for the files written
    assert len((root / "shape_names.txt").read_text().split()) == 40
    with h5py.File(root / "ply_data_train2.h5") as f:
        assert sorted(f) == ["data", "faceId", "label", "normal"]
        assert f["data"].shape == (16, 2048, 3) and f["data"].dtype == np.float32
        assert f["label"].shape == (16, 1) and f["label"].dtype == np.uint8
        assert f["normal"].shape == (16, 2048, 3) and f["faceId"].dtype == np.int32
    id2file = json.loads((root / "ply_data_train_2_id2file.json").read_text())
    assert len(id2file) == 16 and id2file[0].endswith(".ply")
    train = build_dataset("modelnet40_h5", root, "train")
    assert len(train) == 80 and train.class_counts() == [2] * 40
    assert train.points.shape == (80, 2048, 3)
    with_normals = build_dataset("modelnet40_h5", root, "test", use_normals=True, num_points=1024)
    pts, label = with_normals[0]
    assert pts.shape == (1024, 6) and label.dtype == torch.int64
    assert torch.allclose(pts[:, 3:].norm(dim=1), torch.ones(1024), atol=1e-5)
    # no list file: the sorted glob finds the same files
    (root / "train_files.txt").unlink()
    assert torch.equal(build_dataset("modelnet40_h5", root, "train").points, train.points)


def test_synthetic_is_deterministic_and_fast(tmp_path):
    start = time.perf_counter()
    a = write_synthetic("scanobjectnn_obj_bg", tmp_path / "a", 8, 4, seed=3)  # 15 classes
    elapsed = time.perf_counter() - start
    b = write_synthetic("scanobjectnn_obj_bg", tmp_path / "b", 8, 4, seed=3)
    c = write_synthetic("scanobjectnn_obj_bg", tmp_path / "c", 8, 4, seed=4)
    da, db, dc = (build_dataset("scanobjectnn_obj_bg", r, "test").points for r in (a, b, c))
    assert torch.equal(da, db) and not torch.equal(da, dc)
    assert elapsed < 5.0, f"writing 15 x (8 + 4) samples took {elapsed:.1f} s"


def test_synthetic_classes_are_separable(tmp_path):
    """A nearest-neighbour on crude global features already tells the classes apart."""
    root = write_synthetic("scanobjectnn_obj_only", tmp_path, 8, 4, seed=0)

    def features(points):
        p = points - points.mean(1, keepdim=True)
        eig = torch.linalg.eigvalsh(p.transpose(1, 2) @ p / p.shape[1])
        r = p.norm(dim=2)
        hist = torch.stack([torch.histc(x / x.max(), 10, 0, 1) for x in r]) / p.shape[1]
        return torch.cat([eig / eig.sum(1, keepdim=True) * 5, hist], 1)

    train, test = (build_dataset("scanobjectnn_obj_only", root, s) for s in ("train", "test"))
    nearest = torch.cdist(features(test.points), features(train.points)).argmin(1)
    accuracy = (train.labels[nearest] == test.labels).float().mean()
    assert accuracy > 0.8
