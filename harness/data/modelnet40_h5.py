"""ModelNet40 from the official PointNet HDF5 release `modelnet40_ply_hdf5_2048`.

Files are taken in the order of `{split}_files.txt` (only the base names count: the release's
lists carry a `data/modelnet40_ply_hdf5_2048/` prefix); without a list file, the sorted
`ply_data_{split}*.h5` glob. (Point-M2AE globs unsorted, an order that depends on the file
system.) Like its loader, clouds keep the first `num_points` stored points and are not
re-permuted unless `permute=True`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data import data_error
from harness.data.base import META_DIR, PointCloudDataset, check_labels, check_points, \
    check_split, read_h5, read_names

SOURCE = "modelnet40_ply_hdf5_2048 from the PointNet release (modelnet40_ply_hdf5_2048.zip)"
CLASS_NAMES = read_names(META_DIR / "modelnet40_ply_hdf5_2048_meta" / "shape_names.txt",
                         "project metadata")
NUM_POINTS = 2048
OFFICIAL_COUNTS = {"train": 9840, "test": 2468}


def split_files(root: str | Path, split: str) -> list[Path]:
    """The h5 files of one split, in the release's list order."""
    root = Path(root)
    if not root.is_dir():
        raise data_error(root, "no such directory", "the modelnet40_ply_hdf5_2048 folder", SOURCE)
    list_file = root / f"{check_split(split)}_files.txt"
    if list_file.is_file():
        lines = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
        files = [root / Path(ln).name for ln in lines]
    else:
        files = sorted(root.glob(f"ply_data_{split}*.h5"))
    if not files:
        raise data_error(list_file, f"no such file and no ply_data_{split}*.h5 files",
                         f"{list_file.name} or ply_data_{split}0.h5, ...", SOURCE)
    return files


def load_arrays(root: str | Path, split: str, use_normals: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """All files of a split concatenated: (S, 2048, 3 or 6) float32 and (S,) int64 labels."""
    keys = ("data", "label", "normal") if use_normals else ("data", "label")
    points, labels = [], []
    for path in split_files(root, split):
        arrays = read_h5(path, keys, SOURCE, f"a {split} file of modelnet40_ply_hdf5_2048")
        data = check_points(arrays["data"], path, "data", NUM_POINTS, 3, SOURCE)
        if use_normals:
            normal = check_points(arrays["normal"], path, "normal", NUM_POINTS, 3, SOURCE)
            if normal.shape != data.shape:
                raise data_error(path, f"found 'normal' of shape {normal.shape}",
                                 f"the shape of 'data', {data.shape}", SOURCE)
            data = np.concatenate([data, normal], axis=2)
        points.append(data)
        labels.append(check_labels(arrays["label"], data.shape[0], len(CLASS_NAMES), path,
                                   "label", SOURCE))
    return torch.from_numpy(np.concatenate(points)), torch.from_numpy(np.concatenate(labels))


def build(name: str, root: str | Path, split: str, num_points: int = NUM_POINTS,
          use_normals: bool = False, permute: bool = False) -> PointCloudDataset:
    """ModelNet40 h5 split: the first `num_points` stored points per cloud, labels 0..39."""
    if not 0 < num_points <= NUM_POINTS:
        raise data_error("<num_points>", f"found {num_points}", f"1..{NUM_POINTS}", SOURCE)
    points, labels = load_arrays(root, split, use_normals)
    points = points[:, :num_points].contiguous()
    return PointCloudDataset(points, labels, CLASS_NAMES, permute, name, split)
