"""ModelNet40 in the Point-BERT layout (`modelnet40_normal_resampled`).

The loader reads the official processed cache `modelnet40_{split}_{N}pts_fps.dat` (a pickle of
`[list of (N, 6) float32 points, list of int32 (1,) labels]` in list-file order) and builds it
from the `<class>/<id>.txt` files when it is missing, exactly in that structure, so caches are
interchangeable with the ones Point-BERT ships. The two ready 8192-point caches alone are
enough to train and check: class names come from the root's `modelnet40_shape_names.txt` or,
without it, from the official list the project ships; the split lists and shape files are only
read to build a missing cache (and, when present, to check a cache's labels). The official build starts each FPS at a random
index; ours draws the start indices from `cache_seed`, so our builds are reproducible.
`pc_normalize` is applied once to a copy (the official applies it in place on every access).
"""
from __future__ import annotations

import os
import pickle
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from harness import tempfiles
from harness.catalog import DATASETS
from harness.data import data_error
from harness.data.base import PointCloudDataset, check_labels, check_split, read_names
from harness.data.modelnet40_h5 import CLASS_NAMES as OFFICIAL_NAMES  # the same 40 names, same order

SOURCE = ("modelnet40_normal_resampled from the PointNet++/Point-BERT release "
          "(Point-BERT's DATASET.md also links the ready .dat caches)")
LISTS_SOURCE = ("the modelnet40_normal_resampled release (modelnet40_normal_resampled.zip of "
                "PointNet++, linked from Point-BERT's DATASET.md), which holds the list files and "
                "the <class>/<id>.txt shapes")
CACHES_SOURCE = ("Point-BERT's ready caches modelnet40_train_8192pts_fps.dat and "
                 "modelnet40_test_8192pts_fps.dat (linked from its DATASET.md)")
NUM_CLASSES = 40
OFFICIAL_COUNTS = DATASETS["modelnet40"].official_counts
TXT_FIELDS = "x,y,z,nx,ny,nz"


def cache_path(root: str | Path, split: str, npoints: int = 8192) -> Path:
    """The official cache name pattern `modelnet%d_%s_%dpts_fps.dat`."""
    return Path(root) / f"modelnet{NUM_CLASSES}_{split}_{npoints}pts_fps.dat"


def list_path(root: str | Path, split: str) -> Path:
    """The official split list `modelnet40_{train,test}.txt` (one shape id per line)."""
    return Path(root) / f"modelnet{NUM_CLASSES}_{check_split(split)}.txt"


def class_names(root: str | Path) -> list[str]:
    """The 40 class names in label order: the root's `modelnet40_shape_names.txt` when it is
    there (checked: 40 names), else the official list the project ships (alphabetical)."""
    root = Path(root)
    if not root.is_dir():
        raise data_error(root, "no such directory",
                         "the modelnet40_normal_resampled folder (or a folder holding "
                         "the ready .dat caches)", SOURCE)
    path = root / f"modelnet{NUM_CLASSES}_shape_names.txt"
    if not path.is_file():
        return list(OFFICIAL_NAMES)
    names = read_names(path, SOURCE)
    if len(names) != NUM_CLASSES:
        raise data_error(path, f"found {len(names)} names", f"{NUM_CLASSES} class names, one per line",
                         SOURCE)
    return names


def read_split(root: str | Path, split: str) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, shape files and labels of one split, from the official list files
    (needed to build a cache; see `class_names` for the names)."""
    root = Path(root)
    names = class_names(root)
    index = {n: i for i, n in enumerate(names)}
    list_file = list_path(root, split)
    if not list_file.is_file():
        raise data_error(list_file, "no such file",
                         f"the {split} list of shape ids (one such as airplane_0001 per line), "
                         f"needed to build {cache_path(root, split).name}; it comes with "
                         f"{LISTS_SOURCE}. Or put {CACHES_SOURCE} in {root}", SOURCE)
    files, labels = [], []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        shape_id = line.strip()
        if not shape_id:
            continue
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in index:
            raise data_error(f"{list_file}:{lineno}",
                             f"found id {shape_id!r} of unknown class {cls!r}",
                             "an id '<class>_NNNN' whose class is in the shape-name list", SOURCE)
        files.append(root / cls / f"{shape_id}.txt")
        labels.append(index[cls])
    return names, files, np.asarray(labels, dtype=np.int64)


def read_shape_txt(path: Path) -> np.ndarray:
    """One `<id>.txt` as float32 (K, 6), parsed like the official `np.loadtxt(...).astype`."""
    if not path.is_file():
        raise data_error(path, "no such file", f"a shape file of {TXT_FIELDS} lines", SOURCE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below, not warned
            arr = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError:
        raise _bad_line_error(path) from None
    if arr.shape[0] == 0 or arr.shape[1] != 6:
        raise data_error(path, f"found an array of shape {arr.shape}",
                         f"lines of 6 comma-separated numbers {TXT_FIELDS}", SOURCE)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:  # np.loadtxt reads "nan" / "inf" without complaint
        raise data_error(f"{path}:{int(bad[0]) + 1}", f"found NaN or inf on line {int(bad[0]) + 1}",
                         "finite coordinates", SOURCE)
    return arr.astype(np.float32)


def _bad_line_error(path: Path):
    """Find the first line np.loadtxt rejected, to name it in the message."""
    with open(path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue  # np.loadtxt skips blank lines too
            values = line.strip().split(",")
            try:
                ok = len([float(v) for v in values]) == 6
            except ValueError:
                ok = False
            if not ok:
                shown = line.strip()[:60]
                return data_error(f"{path}:{lineno}", f"found line {lineno} {shown!r}",
                                  f"6 comma-separated numbers {TXT_FIELDS}", SOURCE)
    return data_error(path, "found text np.loadtxt cannot parse", f"lines of {TXT_FIELDS}",
                      SOURCE)


def farthest_point_sample(xyz: np.ndarray, m: int, start: int) -> np.ndarray:
    """Indices of m farthest points from `start` (the official numpy FPS, same float32 sums).

    Vectorised over the points; the only Python loop is over the m samples. Once every point
    is taken (m > N) the remaining distances are 0 and the pick repeats index 0, as upstream.
    """
    cols = [np.ascontiguousarray(xyz[:, k], dtype=np.float32) for k in range(3)]
    n = xyz.shape[0]
    dist = np.full(n, 1e10, dtype=np.float32)
    d, tmp = np.empty(n, np.float32), np.empty(n, np.float32)
    idx = np.empty(m, dtype=np.int64)
    far = start
    for i in range(m):
        idx[i] = far
        np.subtract(cols[0], cols[0][far], out=d)
        np.multiply(d, d, out=d)
        for c in cols[1:]:
            np.subtract(c, c[far], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            d += tmp
        np.minimum(dist, d, out=dist)
        far = int(dist.argmax())
    return idx


def _process_shape(job: tuple[Path, int, float]) -> tuple[np.ndarray, bool]:
    """Load one shape and FPS it to npoints; a short shape is filled by cycling its FPS order."""
    path, npoints, u = job
    pts = read_shape_txt(path)
    n = pts.shape[0]
    short = n < npoints
    idx = farthest_point_sample(pts[:, :3], min(n, npoints), int(u * n))
    if short:
        idx = np.resize(idx, npoints)
    return pts[idx], short


def _progress_lines(items, total: int, what: str, log: Callable[[str], None], every: float = 0.1):
    """Yield ``items``, logging one plain line at each ``every`` of ``total`` (for logs that are
    not a terminal, where a tqdm bar shows nothing useful): done/total, elapsed, time left."""
    start, step, mark = time.perf_counter(), max(1, int(total * every)), 0
    for i, item in enumerate(items, 1):
        yield item
        if i >= mark + step or i == total:
            mark = i
            spent = time.perf_counter() - start
            log(f"{what}: {i}/{total} ({100 * i // total}%), {spent:.0f} s, "
                f"about {spent / i * (total - i):.0f} s left")


def build_cache(root: str | Path, split: str, npoints: int = 8192, seed: int = 0,
                workers: int = 1, progress: bool = True, log: Callable[[str], None] | None = None
                ) -> Path:
    """Write the official `.dat` cache of one split (atomically) and return its path.

    ``progress``: a tqdm bar (for a terminal); ``log``: a start line and one line per 10 % of
    the shapes (for job logs), e.g. ``harness.train``'s run log."""
    _, files, labels = read_split(root, split)
    out = cache_path(root, split, npoints)
    starts = np.random.default_rng(seed).random(len(files))  # fraction of each shape's N
    jobs = [(f, npoints, float(u)) for f, u in zip(files, starts)]
    bar = dict(total=len(jobs), desc=f"building {out.name}", unit="shape", disable=not progress)
    if log is not None:
        log(f"building {out} from {len(jobs)} shapes with {workers} worker(s) (once; about 0.1 s a "
            "shape per worker)")

    def watched(results):
        results = tqdm(results, **bar)
        return _progress_lines(results, len(jobs), f"building {out.name}", log) if log else results

    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            results = list(watched(pool.map(_process_shape, jobs, chunksize=chunk)))
    else:
        results = list(watched(_process_shape(j) for j in jobs))
    n_short = sum(short for _, short in results)
    if n_short:
        warnings.warn(f"{out}: {n_short} shapes had fewer than {npoints} points; "
                      "their FPS order was repeated to fill them")
    payload = [[p for p, _ in results], [np.array([c], dtype=np.int32) for c in labels]]
    try:  # a unique temp name, then rename: ranks building at once cannot see half a file
        fd, tmp = tempfiles.mkstemp_for(out)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f)
        os.chmod(tmp, tempfiles.shared_mode())   # other users read the dataset folder too
        os.replace(tmp, out)
    except OSError as err:
        raise data_error(out, f"cannot write it ({err.strerror})",
                         "a writable dataset folder to build the .dat cache in (or put the "
                         "ready caches there)", SOURCE) from None
    return out


def read_cache(path: Path, expected_labels: np.ndarray | None, npoints: int, channels: int = 6
               ) -> tuple[np.ndarray, np.ndarray]:
    """Load and check a `.dat` cache (a pickle: only open caches you trust); returns float32
    points (S, npoints, channels), channels 3 (xyz) or 6 (with normals), and int64 labels (S,).
    With ``expected_labels`` (the split list's) they must be equal, so a stale cache is caught;
    without (no list file) labels are only checked to lie in 0..39."""
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
    except Exception as err:  # any unpickling failure means "not a cache"
        raise data_error(path, f"found a file that does not unpickle ({type(err).__name__})",
                         "the official .dat cache pickle", SOURCE) from None
    if not (isinstance(payload, (list, tuple)) and len(payload) == 2
            and all(isinstance(x, (list, tuple)) for x in payload)
            and len(payload[0]) == len(payload[1])):
        raise data_error(path, f"found a pickled {type(payload).__name__}",
                         "[list_of_points, list_of_labels] of equal length", SOURCE)
    points, labels = (list(x) for x in payload)
    del payload  # the copies below free each cloud once it is moved into `out`
    if expected_labels is not None and len(points) != len(expected_labels):
        raise data_error(path, f"found {len(points)} samples",
                         f"{len(expected_labels)} as in the split list (stale cache? delete it "
                         "to rebuild)", SOURCE)
    out = np.empty((len(points), npoints, channels), dtype=np.float32)
    for i, p in enumerate(points):
        if not (isinstance(p, np.ndarray) and p.shape == (npoints, 6)):
            shape = getattr(p, "shape", type(p).__name__)
            raise data_error(path, f"found sample {i} points of shape {shape}",
                             f"({npoints}, 6) float32 xyz+normals", SOURCE)
        if not np.isfinite(p).all():
            raise data_error(path, f"found NaN or inf in sample {i}", "finite coordinates", SOURCE)
        out[i] = p[:, :channels]
        points[i] = None  # free as we go: the full train cache is about 2 GB
    empty = [i for i, x in enumerate(labels) if np.size(x) != 1]
    if empty:
        raise data_error(path, f"found label {labels[empty[0]]!r} for sample {empty[0]}",
                         "one int32 label per sample", SOURCE)
    got = check_labels(np.asarray([np.ravel(x)[0] for x in labels]), len(labels), NUM_CLASSES,
                       path, "labels", SOURCE)
    bad = np.flatnonzero(got != expected_labels) if expected_labels is not None else []
    if len(bad):
        i = int(bad[0])
        raise data_error(path, f"found label {got[i]} for sample {i}",
                         f"{expected_labels[i]} from the split list (stale cache? delete it to "
                         "rebuild)", SOURCE)
    return out, np.asarray(got, dtype=np.int64)


def pc_normalize(xyz: np.ndarray) -> np.ndarray:
    """Centre on the mean and divide by the largest norm, per cloud (the official formula)."""
    centred = xyz - xyz.mean(axis=0)
    return centred / np.sqrt((centred ** 2).sum(axis=1)).max()


def list_labels(root: str | Path, split: str) -> np.ndarray | None:
    """The split list's labels when the list file is there (to check a cache), else None."""
    return read_split(root, split)[2] if list_path(root, split).is_file() else None


def build(name: str, root: str | Path, split: str, npoints: int = 8192,
          use_normals: bool = False, permute: bool | None = None, build_missing: bool = True,
          cache_seed: int = 0, cache_workers: int = 1, progress: bool = True,
          log: Callable[[str], None] | None = None) -> PointCloudDataset:
    """ModelNet40 split: (npoints, 3) or with normals (npoints, 6) clouds, labels 0..39.

    Reads the split's `.dat` cache; a missing one is built from the list and shape files
    (``progress``/``log``: see `build_cache`), unless ``build_missing`` is false."""
    names = class_names(root)
    path = cache_path(root, split, npoints)
    if not path.is_file():
        if not build_missing:
            raise data_error(path, "no such file", f"the {split} .dat cache ({CACHES_SOURCE})", SOURCE)
        build_cache(root, split, npoints, cache_seed, cache_workers, progress, log)
    points, labels = read_cache(path, list_labels(root, split), npoints, 6 if use_normals else 3)
    for cloud in points:
        cloud[:, :3] = pc_normalize(cloud[:, :3])
    permute = split == "train" if permute is None else permute
    return PointCloudDataset(torch.from_numpy(points), torch.from_numpy(labels), names, permute,
                             name, split)
