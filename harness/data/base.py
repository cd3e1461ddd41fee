"""Pieces shared by the loaders: the in-memory dataset, h5 reading and format checks.

Kept apart from `registry` so each format module stays a thin description of its files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.data import data_error

META_DIR = Path(__file__).resolve().parent / "meta"
SPLITS = ("train", "test")


def read_names(path: Path, source: str) -> list[str]:
    """Class names, one per line (line index = label); a missing file is a DataError."""
    if not path.is_file():
        raise data_error(path, "no such file", "the class-name list (one name per line)", source)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise data_error("<split>", f"found {split!r}", "one of 'train', 'test'", "the caller")
    return split


class PointCloudDataset(Dataset):
    """Clouds held in memory as one tensor; the official loaders' per-access semantics.

    `permute=True` (the official train split) returns a fresh random order of the points on
    every access, drawn from torch's global generator: DataLoader seeds it per worker, so a
    seeded run is reproducible, and the shuffled order is what randomises the FPS start.
    `permute=False` (test) returns the stored order, a view into the shared tensor.
    """

    def __init__(self, points: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 permute: bool, name: str, split: str):
        assert points.dtype == torch.float32 and points.ndim == 3
        assert labels.dtype == torch.int64 and labels.shape == (points.shape[0],)
        self.points, self.labels = points, labels
        self.class_names = list(class_names)
        self.permute, self.name, self.split = permute, name, split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pts = self.points[index]
        if self.permute:  # index_select: advanced indexing is ~40x slower on a busy CPU
            pts = pts.index_select(0, torch.randperm(pts.shape[0]))
        return pts, self.labels[index]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        n, c = self.points.shape[1:]
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
                f"samples={len(self)}, points={n}, channels={c}, classes={self.num_classes})")


def read_h5(path: Path, keys: Sequence[str], source: str, what: str) -> dict[str, np.ndarray]:
    """Read whole datasets `keys` of one h5 file into memory, naming the file on any problem."""
    import h5py

    if not path.is_file():
        raise data_error(path, "no such file", what, source)
    try:
        with h5py.File(path, "r") as f:
            present = sorted(f.keys())
            missing = [k for k in keys if k not in f]
            if missing:
                raise data_error(path, f"found keys {present}", f"key '{missing[0]}' in {what}",
                                 source)
            not_data = [k for k in keys if not isinstance(f[k], h5py.Dataset)]
            if not_data:
                raise data_error(path, f"found '{not_data[0]}' as a {type(f[not_data[0]]).__name__}",
                                 f"'{not_data[0]}' as an array dataset in {what}", source)
            return {k: f[k][()] for k in keys}
    except OSError as err:
        raise data_error(path, f"found a file h5py cannot open ({err})",
                         f"an HDF5 file, {what}", source) from None


def check_points(arr: np.ndarray, path: Path, key: str, n_points: int | None, channels: int,
                 source: str) -> np.ndarray:
    """(S, n_points, channels) floats, returned as float32; n_points=None accepts any count."""
    ok = (arr.ndim == 3 and arr.shape[2] == channels and arr.shape[0] > 0
          and (n_points is None or arr.shape[1] == n_points)
          and np.issubdtype(arr.dtype, np.number))
    if not ok:
        want = f"(S, {n_points if n_points is not None else 'N'}, {channels}) numbers"
        raise data_error(path, f"found '{key}' of shape {arr.shape} dtype {arr.dtype}",
                         f"'{key}' of shape {want}", source)
    out = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite(out, path, key, source)
    return out


def check_finite(points: np.ndarray, path: Path, key: str, source: str) -> None:
    """NaN / inf coordinates are a DataError naming the file and the first bad sample index
    (training would otherwise fail later with a non-finite loss and no word about the file)."""
    finite = np.isfinite(points.reshape(points.shape[0], -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise data_error(path, f"found NaN or inf in '{key}'[{int(bad[0])}] ({bad.size} sample(s) "
                               "non-finite)", "finite coordinates", source)


def check_labels(arr: np.ndarray, n_samples: int, num_classes: int, path: Path, key: str,
                 source: str) -> np.ndarray:
    """Labels of shape (S,) or (S, 1), integers in [0, num_classes), returned as int64."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n_samples,) or not np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_:
        raise data_error(path, f"found '{key}' of shape {arr.shape} dtype {arr.dtype}",
                         f"'{key}' of shape ({n_samples},) or ({n_samples}, 1), one per sample",
                         source)
    labels = arr.astype(np.int64)
    if not np.array_equal(labels, arr):
        raise data_error(path, f"found non-integer '{key}' values", "integer class labels",
                         source)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise data_error(path, f"found '{key}'[{i}] = {labels[i]} ({bad.size} out of range)",
                         f"labels in 0..{num_classes - 1}", source)
    return labels
