"""ModelNet40, Point-BERT layout: real shapes, the official .dat cache, loader semantics."""
import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED
from harness.data import build_dataset, modelnet40
from harness.data.synthetic import write_synthetic
from models.ops import furthest_point_sample_reference

SHARED_SAMPLE = SHARED / "data" / "modelnet40_normal_resampled_sample"
LOCAL_SAMPLE = REPO / "tests" / "data" / "modelnet40_normal_resampled_sample"
LIST_FILES = ("modelnet40_shape_names.txt", "modelnet40_train.txt", "modelnet40_test.txt")


def writable_copy(src: Path, dst: Path) -> Path:
    """Lists copied, class folders linked: the cache is written into dst, never into src."""
    dst.mkdir()
    for name in LIST_FILES:
        shutil.copyfile(src / name, dst / name)
    for d in src.iterdir():
        if d.is_dir():
            (dst / d.name).symlink_to(d)
    return dst


def manifest_labels(folder: Path) -> dict:
    with open(folder / "MANIFEST.tsv") as f:
        return {Path(r["file"]).stem: int(r["label"]) for r in csv.DictReader(f, delimiter="\t")}


def check_real_sample(folder: Path, tmp_path: Path) -> None:
    root = writable_copy(folder, tmp_path / "mn40")
    names = (root / "modelnet40_shape_names.txt").read_text().split()
    truth = manifest_labels(folder)
    for split in ("train", "test"):
        ids = (root / f"modelnet40_{split}.txt").read_text().split()
        ds = build_dataset("modelnet40", root, split, use_normals=True, progress=False)
        assert len(ds) == len(ids) and ds.points.shape == (len(ids), 8192, 6)
        for i, shape_id in enumerate(ids):
            pts, label = ds[i]
            assert pts.dtype == torch.float32 and pts.shape == (8192, 6)
            assert label.dtype == torch.int64 and label.ndim == 0
            assert int(label) == names.index(shape_id.rsplit("_", 1)[0]) == truth[shape_id]
        # pc_normalize once: centred, max norm 1; normals kept as stored (unit length)
        xyz = ds.points[..., :3]
        assert xyz.mean(1).abs().max() < 1e-4
        assert torch.allclose(xyz.norm(dim=2).amax(1), torch.ones(len(ds)), atol=1e-5)
        assert torch.allclose(ds.points[..., 3:].norm(dim=2), torch.ones(1), atol=2e-3)
        # the cache holds FPS points of the file: every cached row is a row of the txt
        raw = pickle.load(open(modelnet40.cache_path(root, split), "rb"))[0][0]
        txt = np.loadtxt(root / ids[0].rsplit("_", 1)[0] / f"{ids[0]}.txt", delimiter=",")
        rows = {tuple(r) for r in txt.astype(np.float32)}
        assert len({tuple(r) for r in raw}) == 8192 and all(tuple(r) in rows for r in raw[:100])
    small = build_dataset("modelnet40", root, "test", npoints=1024, progress=False)
    assert small.points.shape == (len(ids), 1024, 3)
    assert modelnet40.cache_path(root, "test", 1024).name == "modelnet40_test_1024pts_fps.dat"


def test_two_real_shapes_in_project(tmp_path):
    check_real_sample(LOCAL_SAMPLE, tmp_path)


def test_all_24_shared_real_shapes(tmp_path):
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"shared ModelNet40 sample not found at {SHARED_SAMPLE}")
    assert len(manifest_labels(SHARED_SAMPLE)) == 24
    check_real_sample(SHARED_SAMPLE, tmp_path)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mn40") / "modelnet40_normal_resampled"
    return write_synthetic("modelnet40", root, train_per_class=2, test_per_class=1, seed=0,
                           num_classes=3)


def test_synthetic_layout_is_official(synth_root):
    names = (synth_root / "modelnet40_shape_names.txt").read_text().splitlines()
    assert len(names) == 40 and names[0] == "airplane" and names[-1] == "xbox"
    train = (synth_root / "modelnet40_train.txt").read_text().split()
    test = (synth_root / "modelnet40_test.txt").read_text().split()
    assert train == ["airplane_0001", "airplane_0002", "bathtub_0001", "bathtub_0002",
                     "bed_0001", "bed_0002"]
    assert test == ["airplane_0003", "bathtub_0003", "bed_0003"]
    lines = (synth_root / "bed" / "bed_0003.txt").read_text().splitlines()
    assert len(lines) == 10000
    assert all(len(v.split(".")[1]) == 6 for v in lines[0].split(","))
    arr = np.loadtxt(synth_root / "bed" / "bed_0003.txt", delimiter=",")
    assert arr.shape == (10000, 6)
    assert np.allclose(np.linalg.norm(arr[:, 3:], axis=1), 1, atol=1e-5)


def test_cache_has_official_pickle_structure_and_reads_back(synth_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    ds = build_dataset("modelnet40", root, "train", use_normals=True, permute=False,
                       progress=False)
    path = root / "modelnet40_train_8192pts_fps.dat"
    with open(path, "rb") as f:
        points, labels = pickle.load(f)
    assert isinstance(points, list) and isinstance(labels, list) and len(points) == 6
    for p, lab in zip(points, labels):
        assert isinstance(p, np.ndarray) and p.dtype == np.float32 and p.shape == (8192, 6)
        assert isinstance(lab, np.ndarray) and lab.dtype == np.int32 and lab.shape == (1,)
    assert [int(x[0]) for x in labels] == [0, 0, 1, 1, 2, 2]
    for i, p in enumerate(points):  # what the loader returns = pc_normalize of the cache
        expect = np.concatenate([modelnet40.pc_normalize(p[:, :3]), p[:, 3:]], axis=1)
        assert np.array_equal(ds.points[i].numpy(), expect)
    # reading the cache again (no rebuild) gives the same tensor
    again = build_dataset("modelnet40", root, "train", use_normals=True, permute=False,
                          build_missing=False)
    assert torch.equal(again.points, ds.points)


def test_cache_build_is_deterministic_from_seed(synth_root, tmp_path):
    blobs = {}
    for tag, seed in (("a", 0), ("b", 0), ("c", 1)):
        root = tmp_path / tag
        root.mkdir()
        for name in LIST_FILES:
            shutil.copyfile(synth_root / name, root / name)
        for cls in ("airplane", "bathtub", "bed"):
            (root / cls).symlink_to(synth_root / cls)
        blobs[tag] = modelnet40.build_cache(root, "test", seed=seed, progress=False).read_bytes()
    assert blobs["a"] == blobs["b"] and blobs["a"] != blobs["c"]


def test_train_permutes_per_access_test_keeps_order(synth_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    train = build_dataset("modelnet40", root, "train", progress=False)
    test = build_dataset("modelnet40", root, "test", progress=False)
    assert train.points.shape[2] == 3  # normals dropped by default
    a, b = train[0][0], train[0][0]
    assert not torch.equal(a, b)
    assert torch.equal(torch.sort(a, dim=0).values, torch.sort(b, dim=0).values)
    assert torch.equal(test[0][0], test[0][0]) and torch.equal(test[0][0], test.points[0])


def test_numpy_fps_matches_the_official_algorithm_and_the_ops_emulation():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (600, 3)).astype(np.float32)
    xyz = xyz[(xyz ** 2).sum(1) > 1e-2]  # keep clear of the CUDA skip ball around the origin

    def upstream(points, m, start):  # the official loop, written plainly
        distance = np.ones(len(points)) * 1e10
        out, far = [], start
        for _ in range(m):
            out.append(far)
            dist = np.sum((points - points[far]) ** 2, -1)
            distance = np.where(dist < distance, dist, distance)
            far = int(np.argmax(distance))
        return np.array(out)

    for start in (0, 17):
        assert np.array_equal(modelnet40.farthest_point_sample(xyz, 200, start),
                              upstream(xyz, 200, start))
    ops = furthest_point_sample_reference(torch.from_numpy(xyz)[None], 200)[0].numpy()
    assert np.array_equal(modelnet40.farthest_point_sample(xyz, 200, 0), ops)


def test_short_shape_is_filled_with_a_warning(tmp_path):
    root = tmp_path / "mn40"
    write_synthetic("modelnet40", root, 1, 1, num_classes=1)
    txt = root / "airplane" / "airplane_0001.txt"
    txt.write_text("\n".join(txt.read_text().splitlines()[:100]) + "\n")
    with pytest.warns(UserWarning, match="fewer than 256 points"):
        ds = build_dataset("modelnet40", root, "train", npoints=256, progress=False)
    pts = ds.points[0]
    assert pts.shape == (256, 3) and len(torch.unique(pts, dim=0)) == 100


def test_the_two_ready_caches_alone_load_and_check(synth_root, tmp_path):
    """Only Point-BERT's two processed .dat files: loading and `data check` work; the class
    names are the shipped official ones; a missing cache names exactly where it comes from."""
    from harness.data.check import check_dataset, format_report

    built = {split: build_dataset("modelnet40", synth_root, split, progress=False) for split in ("train", "test")}
    root = tmp_path / "caches_only"
    root.mkdir()
    for split in ("train", "test"):
        shutil.copyfile(modelnet40.cache_path(synth_root, split), root / modelnet40.cache_path(root, split).name)
    assert sorted(p.name for p in root.iterdir()) == ["modelnet40_test_8192pts_fps.dat",
                                                      "modelnet40_train_8192pts_fps.dat"]
    for split in ("train", "test"):
        ds = build_dataset("modelnet40", root, split, permute=False, progress=False)
        assert torch.equal(ds.points, built[split].points) and torch.equal(ds.labels, built[split].labels)
        assert ds.class_names == list(modelnet40.OFFICIAL_NAMES) and ds.class_names[0] == "airplane"
    report = check_dataset("modelnet40", root, expect_official_counts=False)
    assert report.ok, format_report(report)
    assert sum(report.counts["train"]) == len(built["train"]) and report.counts["test"][:3] == [1, 1, 1]
    assert any("read alone" in n for n in report.notes)
    (root / "modelnet40_test_8192pts_fps.dat").unlink()
    with pytest.raises(Exception) as err:
        build_dataset("modelnet40", root, "test", progress=False)
    msg = str(err.value)
    assert "modelnet40_test.txt" in msg and "modelnet40_normal_resampled.zip" in msg
    assert "modelnet40_test_8192pts_fps.dat" in msg and "\n" not in msg


def test_cache_build_logs_progress_lines(synth_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    for p in root.glob("*.dat"):
        p.unlink()
    lines = []
    build_dataset("modelnet40", root, "train", progress=False, log=lines.append)
    assert lines[0].startswith(f"building {modelnet40.cache_path(root, 'train')} from 6 shapes")
    assert lines[-1].startswith("building modelnet40_train_8192pts_fps.dat: 6/6 (100%)")
    assert len(lines) == 1 + 6   # one line per shape: 10 % of 6 rounds down to every shape


def test_training_logs_the_cache_build(synth_root, tmp_path):
    """A run whose ModelNet40 caches are missing builds them with progress lines in its log."""
    from types import SimpleNamespace

    from harness import distributed, train

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    for p in root.glob("*.dat"):
        p.unlink()
    cfg = SimpleNamespace(data=SimpleNamespace(dataset="modelnet40", root=str(root), permute_train=True,
                                               use_normals=False, val_fraction=0.0))
    lines = []
    tr, _, te = train._build_splits(cfg, distributed.DistInfo(), False, lines.append)
    assert (len(tr), len(te)) == (6, 3)
    for split, n in (("train", 6), ("test", 3)):
        assert any(line.startswith(f"building {root / f'modelnet40_{split}_8192pts_fps.dat'} from {n} shapes")
                   for line in lines)
        assert f"building modelnet40_{split}_8192pts_fps.dat: {n}/{n} (100%)" in "\n".join(lines)
