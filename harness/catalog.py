"""The datasets the benchmark knows: name -> classes, model family, display name, official
split sizes. Plain data, importable without torch (the result tables read it).

Model families select the official per-dataset backbone geometry in ``models.classifier``.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.errors import choose


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    family: str  # "scan" or "modelnet"
    title: str
    official_counts: dict  # split -> samples in the official release


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("scanobjectnn_obj_bg", 15, "scan", "ScanObjectNN OBJ_BG", {"train": 2309, "test": 581}),
    DatasetInfo("scanobjectnn_obj_only", 15, "scan", "ScanObjectNN OBJ_ONLY", {"train": 2309, "test": 581}),
    DatasetInfo("scanobjectnn_pb_t50_rs", 15, "scan", "ScanObjectNN PB_T50_RS", {"train": 11416, "test": 2882}),
    DatasetInfo("modelnet40", 40, "modelnet", "ModelNet40", {"train": 9843, "test": 2468}),
]}


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS[choose("dataset", name, DATASETS)]
