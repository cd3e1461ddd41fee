"""The datasets the benchmark knows: name -> classes, model family, display name.

Model families select the official per-dataset backbone geometry in ``models.classifier``.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.classifier import choose


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    family: str  # "scan" or "modelnet"
    title: str


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("scanobjectnn_obj_bg", 15, "scan", "ScanObjectNN OBJ_BG"),
    DatasetInfo("scanobjectnn_obj_only", 15, "scan", "ScanObjectNN OBJ_ONLY"),
    DatasetInfo("scanobjectnn_pb_t50_rs", 15, "scan", "ScanObjectNN PB_T50_RS"),
    DatasetInfo("modelnet40", 40, "modelnet", "ModelNet40"),
]}


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS[choose("dataset", name, DATASETS)]
