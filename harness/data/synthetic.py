"""Small synthetic datasets written in the exact official file layouts.

Each class is a parametric surface family (a base shape stretched by an aspect ratio), so a
small model can learn them; instances get jittered proportions, a random rotation about the
up (y) axis and noise. ScanObjectNN-like files add background clutter (mask -1) and, for
PB_T50_RS, a shifted crop box, rotation and scale. Everything is drawn from `seed`, so a
directory is reproducible. The files exercise the real loaders, they are not a benchmark.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.data import data_error
from harness.data import modelnet40_h5, scanobjectnn
from harness.data.base import META_DIR

BASES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "bowl", "cross")
ASPECTS = {"iso": (1.0, 1.0, 1.0), "tall": (0.55, 1.6, 0.55), "flat": (1.5, 0.4, 1.5),
           "long": (1.9, 0.65, 0.65), "slab": (1.5, 1.1, 0.3)}
# 40 families for ModelNet40; ScanObjectNN takes the first 15 (5 bases x 3 aspects).
FAMILIES = [(b, a) for a in ASPECTS for b in BASES[:5]] + \
    [(b, a) for a in ASPECTS for b in BASES[5:]]
# The folder the release's train_files.txt / test_files.txt put before each file name.
H5_PREFIX = Path((META_DIR / "modelnet40_ply_hdf5_2048_meta" / "train_files.txt")
                 .read_text().split()[0]).parent.as_posix()


# ---------------------------------------------------------------- base surfaces (points, normals)
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _sphere(n, rng):
    v = _unit(rng.normal(size=(n, 3)))
    return v, v


def _bowl(n, rng):
    v, _ = _sphere(n, rng)
    v[:, 1] = -np.abs(v[:, 1])
    return v, v.copy()


def _box(n, rng, half=(1.0, 1.0, 1.0)):
    """Surface of an axis-aligned box, faces picked in proportion to their area."""
    half = np.asarray(half)
    area = np.array([half[(a + 1) % 3] * half[(a + 2) % 3] for a in range(3)])
    axis = rng.choice(3, size=n, p=area / area.sum())
    sign = rng.choice([-1.0, 1.0], size=n)
    pts = rng.uniform(-1, 1, size=(n, 3)) * half
    rows = np.arange(n)
    pts[rows, axis] = sign * half[axis]
    normals = np.zeros((n, 3))
    normals[rows, axis] = sign
    return pts, normals


def _cube(n, rng):
    return _box(n, rng)


def _cross(n, rng):
    parts = [_box(k, rng, np.roll([1.0, 0.22, 0.22], a)) for a, k in
             enumerate(np.diff(np.linspace(0, n, 4).astype(int)))]
    return np.concatenate([p for p, _ in parts]), np.concatenate([q for _, q in parts])


def _cylinder(n, rng):
    theta = rng.uniform(0, 2 * np.pi, n)
    side = rng.random(n) < 2 / 3  # side area 4*pi, caps 2*pi
    r = np.where(side, 1.0, np.sqrt(rng.random(n)))
    y = np.where(side, rng.uniform(-1, 1, n), rng.choice([-1.0, 1.0], n))
    pts = np.stack([r * np.cos(theta), y, r * np.sin(theta)], 1)
    normals = np.where(side[:, None], pts * [1, 0, 1], [0, 1, 0] * np.sign(y)[:, None])
    return pts, normals


def _cone(n, rng):
    theta = rng.uniform(0, 2 * np.pi, n)
    side = rng.random(n) < np.sqrt(5) / (np.sqrt(5) + 1)  # lateral pi*sqrt(5), base pi
    t = np.sqrt(rng.random(n))  # area-uniform distance from the apex (or base centre)
    y = np.where(side, 1 - 2 * t, -1.0)
    c, s = np.cos(theta), np.sin(theta)
    pts = np.stack([t * c, y, t * s], 1)
    lateral = _unit(np.stack([2 * c, np.ones(n), 2 * s], 1))
    normals = np.where(side[:, None], lateral, [0.0, -1.0, 0.0])
    return pts, normals


def _torus(n, rng, big=0.7, small=0.3):
    theta, phi = rng.uniform(0, 2 * np.pi, (2, n))
    ring = big + small * np.cos(phi)
    pts = np.stack([ring * np.cos(theta), small * np.sin(phi), ring * np.sin(theta)], 1)
    normals = np.stack([np.cos(phi) * np.cos(theta), np.sin(phi), np.cos(phi) * np.sin(theta)], 1)
    return pts, normals


def _pyramid(n, rng):
    """Square base y=-1, apex (0,1,0); triangles picked by area, normals point outward."""
    apex, b = np.array([0.0, 1.0, 0.0]), np.array([[-1, -1, -1], [1, -1, -1], [1, -1, 1],
                                                    [-1, -1, 1]], dtype=float)
    tris = np.array([[b[i], b[(i + 1) % 4], apex] for i in range(4)] +
                    [[b[0], b[1], b[2]], [b[0], b[2], b[3]]])
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    area = np.linalg.norm(cross, axis=1)
    face = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    t = tris[face]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = _unit(cross[face])
    normals *= np.sign((normals * t.mean(axis=1)).sum(1))[:, None]  # convex about the origin
    return pts, normals


SAMPLERS = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone,
            "torus": _torus, "pyramid": _pyramid, "bowl": _bowl, "cross": _cross}


def rotate_y(v: np.ndarray, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return v @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T


def sample_instance(label: int, n: int, rng: np.random.Generator,
                    noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """One shape of class `label`: jittered aspect, random y rotation, noise, unit sphere."""
    base, aspect = FAMILIES[label]
    pts, normals = SAMPLERS[base](n, rng)
    scale = np.asarray(ASPECTS[aspect]) * rng.uniform(0.9, 1.1, 3)
    pts, normals = pts * scale, _unit(normals / scale)
    theta = rng.uniform(0, 2 * np.pi)
    pts, normals = rotate_y(pts, theta), rotate_y(normals, theta)
    pts = pts + rng.normal(scale=noise, size=pts.shape)
    pts = pts - pts.mean(axis=0)
    pts /= np.linalg.norm(pts, axis=1).max()
    order = rng.permutation(n)
    return pts[order].astype(np.float32), normals[order].astype(np.float32)


# ---------------------------------------------------------------- ScanObjectNN-like clouds
def _clutter(n: int, obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background around an object: a floor patch, a wall patch behind it, a few blobs."""
    k_floor, k_wall = n // 2, n // 4
    floor = np.column_stack([rng.uniform(-1.3, 1.3, k_floor),
                             np.full(k_floor, obj[:, 1].min() - 0.02),
                             rng.uniform(-1.3, 1.3, k_floor)])
    wall = np.column_stack([rng.uniform(-1.3, 1.3, k_wall), rng.uniform(-1, 1.2, k_wall),
                            np.full(k_wall, -1.25)])
    k_blob = n - k_floor - k_wall
    centres = rng.uniform(-1.2, 1.2, (3, 3)) * [1, 0.5, 1]
    blobs = centres[rng.integers(3, size=k_blob)] + rng.normal(scale=0.08, size=(k_blob, 3))
    pts = np.concatenate([floor, wall, blobs])
    return pts + rng.normal(scale=0.005, size=pts.shape)


def scan_sample(name: str, label: int, rng: np.random.Generator, instance: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(2048, 3) float32 points and (2048,) mask (-1 background, else the instance id)."""
    n = scanobjectnn.NUM_POINTS
    if name == "scanobjectnn_obj_only":
        obj, _ = sample_instance(label, n, rng)
        return obj, np.full(n, instance, dtype=np.int32)
    pb = name == "scanobjectnn_pb_t50_rs"
    n_obj = int(n * 0.75)
    obj, _ = sample_instance(label, 2 * n if pb else n_obj, rng)
    bg = _clutter((2 * n if pb else n - n_obj), obj, rng)
    pts = np.concatenate([obj, bg])
    mask = np.concatenate([np.full(len(obj), instance), np.full(len(bg), -1)]).astype(np.int32)
    if pb:  # crop box shifted by up to 50% of the object's extent, then rotate and scale
        lo, hi = obj.min(0), obj.max(0)
        shift = rng.uniform(-0.5, 0.5, 3) * (hi - lo)
        margin = 0.25 * (hi - lo)  # the crop keeps some context around the shifted box
        inside = np.all((pts >= lo + shift - margin) & (pts <= hi + shift + margin), axis=1)
        keep = np.flatnonzero(inside)
        pick = rng.choice(keep, n, replace=len(keep) < n)
        pts, mask = pts[pick] - (lo + hi + 2 * shift) / 2, mask[pick]
        pts = rotate_y(pts, rng.uniform(-np.pi, np.pi)) * rng.uniform(0.75, 1.25)
    order = rng.permutation(n)
    return pts[order].astype(np.float32), mask[order]


# ---------------------------------------------------------------- writers
def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced labels in a shuffled order (the release files are not sorted by class)."""
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _check_counts(num_classes: int, limit: int, per_class: dict) -> None:
    if not 1 <= num_classes <= limit or min(per_class.values()) < 1:
        raise data_error("<synth options>",
                         f"found num_classes={num_classes}, per class {per_class}",
                         f"1..{limit} classes and at least 1 sample per class and split",
                         "the synthetic generator")


def write_scanobjectnn(name: str, out: Path, per_class: dict, seed: int,
                       num_classes: int = 15) -> None:
    import h5py

    variant = scanobjectnn.VARIANTS[name]
    folder = out / variant.folder
    folder.mkdir(parents=True, exist_ok=True)
    for k, (split, count) in enumerate(per_class.items()):
        rng = np.random.default_rng([seed, k])
        labels = _labels(num_classes, count, rng)
        samples = [scan_sample(name, int(c), rng, i) for i, c in enumerate(labels)]
        with h5py.File(folder / variant.files[split], "w") as f:
            f["data"] = np.stack([p for p, _ in samples])
            f["label"] = labels.astype(np.int64)
            f["mask"] = np.stack([m for _, m in samples])


def _write_txt(path: Path, arr: np.ndarray) -> None:
    """Same bytes as np.savetxt(path, arr, fmt='%.6f', delimiter=','), about twice as fast."""
    row = ",".join(["%.6f"] * arr.shape[1]) + "\n"
    path.write_text((row * len(arr)) % tuple(arr.ravel().tolist()))


def write_modelnet40(out: Path, per_class: dict, seed: int, num_classes: int = 40,
                     n_points: int = 10000) -> None:
    """`<class>/<class>_NNNN.txt` (x,y,z,nx,ny,nz), the 40 names and the two split lists;
    ids are numbered per class, train first, as in the release."""
    names = modelnet40_h5.CLASS_NAMES
    out.mkdir(parents=True, exist_ok=True)
    (out / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    lists = {split: [] for split in per_class}
    for c in range(num_classes):
        rng = np.random.default_rng([seed, c])
        (out / names[c]).mkdir(exist_ok=True)
        number = 0
        for split, count in per_class.items():
            for _ in range(count):
                number += 1
                shape_id = f"{names[c]}_{number:04d}"
                pts, normals = sample_instance(c, n_points, rng)
                _write_txt(out / names[c] / f"{shape_id}.txt", np.hstack([pts, normals]))
                lists[split].append(shape_id)
    for split, ids in lists.items():
        (out / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")


def write_modelnet40_h5(out: Path, per_class: dict, seed: int, num_classes: int = 40,
                        rows_per_file: int = 2048) -> None:
    """ply_data_{split}{i}.h5 (data, label (S,1) uint8, normal, faceId), the file lists,
    shape_names.txt and the per-file id2file json, chunked like the release (2048 rows)."""
    import h5py

    names = modelnet40_h5.CLASS_NAMES
    out.mkdir(parents=True, exist_ok=True)
    (out / "shape_names.txt").write_text("\n".join(names) + "\n")
    for k, (split, count) in enumerate(per_class.items()):
        rng = np.random.default_rng([seed, k])
        labels = _labels(num_classes, count, rng)
        clouds = [sample_instance(int(c), modelnet40_h5.NUM_POINTS, rng) for c in labels]
        numbers = np.zeros(num_classes, dtype=int)
        files = []
        for i, start in enumerate(range(0, len(labels), rows_per_file)):
            rows = slice(start, start + rows_per_file)
            path = out / f"ply_data_{split}{i}.h5"
            with h5py.File(path, "w") as f:
                f["data"] = np.stack([p for p, _ in clouds[rows]])
                f["label"] = labels[rows, None].astype(np.uint8)
                f["normal"] = np.stack([q for _, q in clouds[rows]])
                f["faceId"] = np.zeros((len(labels[rows]), modelnet40_h5.NUM_POINTS), np.int32)
            id2file = []
            for c in labels[rows]:
                numbers[c] += 1
                id2file.append(f"{names[c]}/{names[c]}_{numbers[c]:04d}.ply")
            (out / f"ply_data_{split}_{i}_id2file.json").write_text(json.dumps(id2file))
            files.append(f"{H5_PREFIX}/{path.name}")
        (out / f"{split}_files.txt").write_text("\n".join(files) + "\n")


def write_synthetic(name: str, out: str | Path, train_per_class: int = 8,
                    test_per_class: int = 4, seed: int = 0, num_classes: int | None = None,
                    **opts) -> Path:
    """Write dataset `name` under `out` in its official layout; returns the root to load."""
    from harness.data.registry import dataset_info

    info, out = dataset_info(name), Path(out)
    num_classes = info.num_classes if num_classes is None else num_classes
    per_class = {"train": train_per_class, "test": test_per_class}
    _check_counts(num_classes, info.num_classes, per_class)
    if name in scanobjectnn.VARIANTS:
        write_scanobjectnn(name, out, per_class, seed, num_classes, **opts)
    elif name == "modelnet40":
        write_modelnet40(out, per_class, seed, num_classes, **opts)
    else:
        write_modelnet40_h5(out, per_class, seed, num_classes, **opts)
    return out
