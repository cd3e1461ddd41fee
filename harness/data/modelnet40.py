"""ModelNet40 in the Point-BERT layout (`modelnet40_normal_resampled`, spec 7.2).

The loader reads the official processed cache `modelnet40_{split}_{N}pts_fps.dat` (a pickle of
`[list of (N, 6) float32 points, list of int32 (1,) labels]` in list-file order) and builds it
from the `<class>/<id>.txt` files when it is missing, exactly in that structure, so caches are
interchangeable with the ones Point-BERT ships. The official build starts each FPS at a random
index; ours draws the start indices from `cache_seed`, so our builds are reproducible.
`pc_normalize` is applied once to a copy (the official applies it in place on every access).
"""
from __future__ import annotations

import os
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness import tempfiles
from harness.data import data_error
from harness.data.base import PointCloudDataset, check_labels, check_split, read_names

SOURCE = ("modelnet40_normal_resampled from the PointNet++/Point-BERT release "
          "(Point-BERT's DATASET.md also links the ready .dat caches)")
NUM_CLASSES = 40
OFFICIAL_COUNTS = {"train": 9843, "test": 2468}
TXT_FIELDS = "x,y,z,nx,ny,nz"


def cache_path(root: str | Path, split: str, npoints: int = 8192) -> Path:
    """The official cache name pattern `modelnet%d_%s_%dpts_fps.dat`."""
    return Path(root) / f"modelnet{NUM_CLASSES}_{split}_{npoints}pts_fps.dat"


def read_split(root: str | Path, split: str) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, shape files and labels of one split, from the official list files."""
    root = Path(root)
    if not root.is_dir():
        raise data_error(root, "no such directory",
                         "the modelnet40_normal_resampled folder", SOURCE)
    names = read_names(root / f"modelnet{NUM_CLASSES}_shape_names.txt", SOURCE)
    if len(names) != NUM_CLASSES:
        raise data_error(root / f"modelnet{NUM_CLASSES}_shape_names.txt",
                         f"found {len(names)} names", f"{NUM_CLASSES} class names, one per line",
                         SOURCE)
    index = {n: i for i, n in enumerate(names)}
    list_file = root / f"modelnet{NUM_CLASSES}_{check_split(split)}.txt"
    if not list_file.is_file():
        raise data_error(list_file, "no such file",
                         f"the {split} list of shape ids (one such as airplane_0001 per line)",
                         SOURCE)
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


def build_cache(root: str | Path, split: str, npoints: int = 8192, seed: int = 0,
                workers: int = 1, progress: bool = True) -> Path:
    """Write the official `.dat` cache of one split (atomically) and return its path."""
    _, files, labels = read_split(root, split)
    out = cache_path(root, split, npoints)
    starts = np.random.default_rng(seed).random(len(files))  # fraction of each shape's N
    jobs = [(f, npoints, float(u)) for f, u in zip(files, starts)]
    bar = dict(total=len(jobs), desc=f"building {out.name}", unit="shape", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            results = list(tqdm(pool.map(_process_shape, jobs, chunksize=chunk), **bar))
    else:
        results = [_process_shape(j) for j in tqdm(jobs, **bar)]
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


def read_cache(path: Path, expected_labels: np.ndarray, npoints: int, channels: int = 6
               ) -> np.ndarray:
    """Load and check a `.dat` cache (a pickle: only open caches you trust); returns float32
    (S, npoints, channels), channels 3 (xyz) or 6 (with normals). Labels must equal the list
    file's, so a stale cache is caught."""
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
    if len(points) != len(expected_labels):
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
    bad = np.flatnonzero(got != expected_labels)
    if bad.size:
        i = int(bad[0])
        raise data_error(path, f"found label {got[i]} for sample {i}",
                         f"{expected_labels[i]} from the split list (stale cache? delete it to "
                         "rebuild)", SOURCE)
    return out


def pc_normalize(xyz: np.ndarray) -> np.ndarray:
    """Centre on the mean and divide by the largest norm, per cloud (the official formula)."""
    centred = xyz - xyz.mean(axis=0)
    return centred / np.sqrt((centred ** 2).sum(axis=1)).max()


def build(name: str, root: str | Path, split: str, npoints: int = 8192,
          use_normals: bool = False, permute: bool | None = None, build_missing: bool = True,
          cache_seed: int = 0, cache_workers: int = 1, progress: bool = True
          ) -> PointCloudDataset:
    """ModelNet40 split: (npoints, 3) or with normals (npoints, 6) clouds, labels 0..39."""
    names, _, labels = read_split(root, split)
    path = cache_path(root, split, npoints)
    if not path.is_file():
        if not build_missing:
            raise data_error(path, "no such file", f"the {split} .dat cache", SOURCE)
        build_cache(root, split, npoints, cache_seed, cache_workers, progress)
    points = read_cache(path, labels, npoints, 6 if use_normals else 3)
    for cloud in points:
        cloud[:, :3] = pc_normalize(cloud[:, :3])
    permute = split == "train" if permute is None else permute
    return PointCloudDataset(torch.from_numpy(points), torch.from_numpy(labels), names, permute,
                             name, split)
