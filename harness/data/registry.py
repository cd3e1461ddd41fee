"""The dataset names the project knows, and `build_dataset` to open one of them.

Each entry records what `data check` and the docs need to know about a format without
loading it: the module that reads it, the class names, the official split sizes, and where
the files come from.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from harness.data import data_error, modelnet40, modelnet40_h5, scanobjectnn
from harness.data.base import PointCloudDataset


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    module: ModuleType        # has build(name, root, split, **opts) and SOURCE
    class_names: tuple        # label order; for modelnet40 the root's list must match it
    official_counts: dict     # split -> samples in the official release
    layout: str               # one line: what `root` must point at

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def source(self) -> str:
        return self.module.SOURCE


def _scan(name: str) -> DatasetInfo:
    v = scanobjectnn.VARIANTS[name]
    files = " + ".join(f"{v.folder}/{f}" for f in v.files.values())
    return DatasetInfo(name, scanobjectnn, tuple(scanobjectnn.CLASS_NAMES), v.official_counts,
                       f"the unzipped h5_files folder with {files}")


DATASETS: dict[str, DatasetInfo] = {
    **{n: _scan(n) for n in scanobjectnn.VARIANTS},
    "modelnet40": DatasetInfo(
        "modelnet40", modelnet40, tuple(modelnet40_h5.CLASS_NAMES), modelnet40.OFFICIAL_COUNTS,
        "the modelnet40_normal_resampled folder (<class>/<id>.txt, list files, .dat caches)"),
    "modelnet40_h5": DatasetInfo(
        "modelnet40_h5", modelnet40_h5, tuple(modelnet40_h5.CLASS_NAMES),
        modelnet40_h5.OFFICIAL_COUNTS,
        "the modelnet40_ply_hdf5_2048 folder (ply_data_*.h5, train_files.txt, test_files.txt)"),
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise data_error("<dataset name>", f"found {name!r}",
                         f"one of {', '.join(DATASET_NAMES)}", "the project's dataset registry")
    return DATASETS[name]


def build_dataset(name: str, root: str | Path, split: str, **opts) -> PointCloudDataset:
    """Open split 'train' or 'test' of dataset `name` stored under `root`.

    Options by format: ScanObjectNN `permute`; modelnet40 `npoints` (8192), `use_normals`,
    `permute`, `build_missing`, `cache_seed`, `cache_workers`, `progress`; modelnet40_h5
    `num_points` (2048), `use_normals`, `permute`. Every item is (points (N, C) float32,
    label int64 scalar).
    """
    info = dataset_info(name)
    valid = list(inspect.signature(info.module.build).parameters)[3:]
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise data_error(f"<options of {name}>", f"found unknown option {unknown[0]!r}",
                         f"one of {', '.join(valid)}", "the project's dataset registry")
    return info.module.build(name, root, split, **opts)
