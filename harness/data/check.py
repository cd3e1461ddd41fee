"""`data check`: does a dataset folder match what the official loaders expect?

It opens every split the way training will (so a problem shows up now, not an hour into a
run), counts samples per class, and compares the totals with the official release. For the
Point-BERT ModelNet40 layout it checks the lists, that every listed shape file exists and any
`.dat` cache present, without building a missing cache (`deep=True` also parses every txt).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from harness.data import DataError, data_error, modelnet40
from harness.data.base import SPLITS
from harness.data.registry import DatasetInfo, build_dataset, dataset_info
from harness.results.stats import class_baselines


@dataclass
class CheckReport:
    name: str
    root: Path
    class_names: tuple
    counts: dict = field(default_factory=dict)  # split -> per-class counts
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _modelnet40_counts(info: DatasetInfo, root: Path, split: str, deep: bool,
                       report: CheckReport) -> list[int]:
    names = modelnet40.class_names(root)
    list_file, cache = modelnet40.list_path(root, split), modelnet40.cache_path(root, split)
    if not list_file.is_file() and cache.is_file():   # Point-BERT's ready caches alone
        labels = modelnet40.read_cache(cache, None, 8192)[1]
        report.notes.append(f"{split}: {cache.name} read alone (no {list_file.name}: labels checked "
                            "for range only; the list and shape files are needed only to rebuild it)")
        return np.bincount(labels, minlength=info.num_classes).tolist()
    names, files, labels = modelnet40.read_split(root, split)
    if tuple(names) != info.class_names:
        report.errors.append(str(data_error(
            root / "modelnet40_shape_names.txt", "found names in a different order or spelling",
            "the official 40 names, alphabetical (airplane ... xbox)", info.source)))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise data_error(missing[0], f"no such file ({len(missing)} of {len(files)} shapes "
                         f"listed in {list_file.name} are missing)",
                         "one <class>/<id>.txt per listed id", info.source)
    if cache.is_file():
        modelnet40.read_cache(cache, labels, 8192)
        report.notes.append(f"{split}: cache {cache.name} matches {list_file.name}")
    else:
        report.notes.append(f"{split}: no {cache.name}; the first load builds it "
                            f"({len(files)} shapes, about 0.1 s each per worker)")
    if deep:
        short = 0
        for f in tqdm(files, desc=f"parsing {split} shapes", unit="shape"):
            short += modelnet40.read_shape_txt(f).shape[0] < 8192
        if short:
            report.warnings.append(f"{split}: {short} shapes have fewer than 8192 points; "
                                   "the cache repeats their FPS order to fill them")
    return np.bincount(labels, minlength=info.num_classes).tolist()


def check_dataset(name: str, root: str | Path, expect_official_counts: bool = True,
                  allow_count_mismatch: bool = False, deep: bool = False) -> CheckReport:
    """Check both splits of `name` under `root`; problems go to the report, not raised."""
    info, root = dataset_info(name), Path(root)
    report = CheckReport(name, root, info.class_names)
    for split in SPLITS:
        try:
            if name == "modelnet40":
                report.counts[split] = _modelnet40_counts(info, root, split, deep, report)
            else:
                report.counts[split] = build_dataset(name, root, split).class_counts()
        except DataError as err:
            if str(err) not in report.errors:  # e.g. a missing root fails both splits alike
                report.errors.append(str(err))
    if expect_official_counts:
        for split, counts in report.counts.items():
            found, want = sum(counts), info.official_counts[split]
            if found != want:
                msg = (f"{root}: found {found} {split} samples; expected the official {want} "
                       f"of {name}")
                if allow_count_mismatch:
                    report.warnings.append(msg + " (accepted: --allow-count-mismatch)")
                else:
                    report.errors.append(msg + " (a subset or synthetic set? pass "
                                         "--allow-count-mismatch; source: " + info.source + ")")
    return report


def baselines_line(report: CheckReport) -> str:
    """What an accuracy on this test split must beat: chance and the majority class (in %)."""
    counts = report.counts["test"]
    chance, majority = class_baselines(counts)
    if chance is None:
        return "baselines (test split): none, the test split has no samples"
    top = max(range(len(counts)), key=counts.__getitem__)
    return (f"baselines (test split): chance {chance:.2f}% ({round(100 / chance)} classes with samples), "
            f"majority class {majority:.2f}% (always '{report.class_names[top]}': "
            f"{counts[top]} of {sum(counts)} test samples)")


def format_report(report: CheckReport) -> str:
    """Per-class count table, then notes, warnings, errors and a verdict line."""
    splits = [s for s in SPLITS if s in report.counts]
    rows = [[i, n, *(report.counts[s][i] for s in splits)]
            for i, n in enumerate(report.class_names)]
    info = dataset_info(report.name)
    rows.append(["", "total", *(sum(report.counts[s]) for s in splits)])
    rows.append(["", "official", *(info.official_counts[s] for s in splits)])
    lines = [f"{report.name} at {report.root}"]
    if splits:
        lines.append(tabulate(rows, headers=["label", "class", *splits], tablefmt="github"))
    if "test" in report.counts:
        lines.append(baselines_line(report))
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.errors]
    lines.append("OK" if report.ok else f"FAILED: {len(report.errors)} problem(s)")
    return "\n".join(lines)
