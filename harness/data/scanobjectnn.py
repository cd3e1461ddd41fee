"""ScanObjectNN from the authors' `h5_files.zip`, read as the official loaders do.

`root` is the unzipped `h5_files` folder (holding `main_split/` and `main_split_nobg/`); a
root that already is the variant's folder is accepted too. Points are used as stored (no
normalisation); the train split is re-permuted on every access, the test split is not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.catalog import DATASETS
from harness.data import data_error
from harness.data.base import META_DIR, PointCloudDataset, check_labels, check_points, \
    check_split, read_h5, read_names

SOURCE = ("ScanObjectNN h5_files.zip from the ScanObjectNN authors "
          "(hkust-vgd.github.io/scanobjectnn)")
CLASS_NAMES = read_names(META_DIR / "scanobjectnn_meta" / "shape_names_ext.txt", "project metadata")
NUM_POINTS = 2048


@dataclass(frozen=True)
class Variant:
    label: str            # the paper's name
    folder: str           # sub-folder of h5_files
    files: dict           # split -> file name
    official_counts: dict  # split -> samples


VARIANTS = {
    "scanobjectnn_obj_bg": Variant(
        "OBJ_BG", "main_split",
        {"train": "training_objectdataset.h5", "test": "test_objectdataset.h5"},
        DATASETS["scanobjectnn_obj_bg"].official_counts),
    "scanobjectnn_obj_only": Variant(
        "OBJ_ONLY", "main_split_nobg",
        {"train": "training_objectdataset.h5", "test": "test_objectdataset.h5"},
        DATASETS["scanobjectnn_obj_only"].official_counts),
    "scanobjectnn_pb_t50_rs": Variant(
        "PB_T50_RS", "main_split",
        {"train": "training_objectdataset_augmentedrot_scale75.h5",
         "test": "test_objectdataset_augmentedrot_scale75.h5"},
        DATASETS["scanobjectnn_pb_t50_rs"].official_counts),
}


def split_file(name: str, root: str | Path, split: str) -> Path:
    """Where the official release keeps this variant's split file under `root`."""
    variant, root = VARIANTS[name], Path(root)
    if not root.is_dir():
        raise data_error(root, "no such directory",
                         f"the unzipped h5_files folder holding {variant.folder}/", SOURCE)
    folder = root if root.name == variant.folder else root / variant.folder
    return folder / variant.files[check_split(split)]


def load_arrays(name: str, root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """Read and check one split file: points (S, 2048, 3) float32, labels (S,) int64."""
    path = split_file(name, root, split)
    variant = VARIANTS[name]
    what = f"the {variant.label} {split} file {variant.folder}/{variant.files[split]}"
    arrays = read_h5(path, ("data", "label"), SOURCE, what)
    points = check_points(arrays["data"], path, "data", NUM_POINTS, 3, SOURCE)
    labels = check_labels(arrays["label"], points.shape[0], len(CLASS_NAMES), path, "label",
                          SOURCE)
    return torch.from_numpy(points), torch.from_numpy(labels), path


def build(name: str, root: str | Path, split: str, permute: bool | None = None
          ) -> PointCloudDataset:
    """One variant and split; `permute` defaults to the official choice (train only)."""
    points, labels, _ = load_arrays(name, root, split)
    permute = split == "train" if permute is None else permute
    return PointCloudDataset(points, labels, CLASS_NAMES, permute, name, split)
