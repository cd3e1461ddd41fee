"""`run_all.py tables` output is pinned: a few hundred varied records (several setups per row,
seeds run twice, failed runs, schema-1 records, non-comparable runs of every kind, bad files of
every kind) give byte for byte the committed tables.md, summary.csv, paired.csv and problem
lines (tests/golden/tables/). A change to the loading or table code that is meant to be faster
only must leave them as they are; a change meant to alter the output regenerates them with
``python tests/test_tables_golden.py`` and shows the difference in review.
"""
from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

from harness import results

GOLDEN = Path(__file__).resolve().parent / "golden" / "tables"
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "paper.csv"
BACKBONES = ("point_bert", "point_mae", "point_m2ae")
METHODS = ("full", "point_peft", "idpt")
DATASETS = ("scanobjectnn_obj_bg", "scanobjectnn_pb_t50_rs", "modelnet40", "shapenet_parts")
COUNTS = {"scanobjectnn_obj_bg": (2309, 581, 15), "scanobjectnn_pb_t50_rs": (11416, 2882, 15),
          "modelnet40": (9843, 2468, 40), "shapenet_parts": (100, 50, 16)}


def _record(rng: random.Random, i: int, setup: dict, seed: int) -> dict:
    """One record of ``setup`` (a dict of the choices shared by its runs) and ``seed``."""
    b, m, d = setup["backbone"], setup["method"], setup["dataset"]
    train, test, classes = COUNTS[d]
    failed = rng.random() < 0.2
    acc = round(60 + 35 * rng.random(), rng.choice((2, 6, 12)))
    metrics = None if failed else {
        "acc_last": rng.choice((acc - 1, None, int(acc))), "acc_best_test": rng.choice((acc, acc, None)),
        "best_test_epoch": rng.randrange(300),
        "acc_best_val": acc - 0.5 if setup["val"] else None, "acc_vote": acc + 0.25 if setup["vote"] else None}
    data = None if setup["no_data"] else {
        "train": train - setup["val_n"] - setup["short"], "val": setup["val_n"], "test": test,
        "class_counts": {"test": [test // classes] * (classes - 1) + [test - (test // classes) * (classes - 1)]}
        if setup["class_counts"] else None}
    rec = {"schema": 2, "run_id": f"{d[:6]}-{b}-{m}-s{seed}-{i:04d}", "setup_id": setup["setup_id"],
           "status": "failed" if failed else "done", "experiment": "golden", "backbone": b, "method": m,
           "dataset": d, "variant": setup["variant"], "data_source": setup["source"], "seed": seed,
           "metrics": metrics, "params": setup["params"], "epochs": setup["epochs"],
           "wall_time_s": round(3600 * rng.random(), 3), "compute_time_s": rng.choice((1000 * rng.random(), 7200, None)),
           "segments": 1, "seconds_per_epoch": rng.choice((12.5, 3 * rng.random(), None)),
           "train_samples_per_s": 100.0, "peak_memory_bytes": rng.choice((2_000_000_000, int(9e9 * rng.random()), None)),
           "device": "cuda", "world_size": 1, "git_commit": "0" * 40, "packages": {"torch": "2.13.0"},
           "config": copy.deepcopy(setup["config"]), "data": data, "pretrained": setup["pretrained"],
           "config_hash": f"{i:064x}", "start_time": "2026-01-01T00:00:00Z",
           "end_time": rng.choice((f"2026-01-0{1 + seed % 9}T00:{i % 60:02d}:00Z", None, "")),
           "error": None if not failed else rng.choice(
               ({"type": "RuntimeError", "message": f"CUDA out of memory\nsecond line {i}"},
                f"killed by the OOM killer ({i})", None, {"type": "job TIMEOUT"}))}
    if rng.random() < 0.05:
        rec["gpu_hours"] = round(rng.random(), 4)
    if rng.random() < 0.05:
        del rec["compute_time_s"]            # falls back to wall_time_s
    if rng.random() < 0.03:
        del rec["end_time"]
    if setup["schema1"]:
        rec["schema"] = 1
        del rec["setup_id"]
        rec["config"]["train"]["seed"] = seed
    if failed and rng.random() < 0.3:
        rec.pop("setup_id", None)
    return rec


def _setups(rng: random.Random) -> list[dict]:
    setups = []
    for k in range(40):
        b, m, d = rng.choice(BACKBONES), rng.choice(METHODS), rng.choice(DATASETS)
        if k < 12:   # a full and a PEFT setup of one (backbone, dataset) each, for the paired table
            b, m, d = BACKBONES[k % 3], ("full", "point_peft")[(k // 3) % 2], DATASETS[(k // 6) % 2]
        npoints = rng.choice((None, 1024, 2048, 1024, 2048, 8192))
        pretrained = rng.random() < 0.85
        config = {"model": {"pretrained": "ckpt.pth" if pretrained else None, "backbone": b, "method": m},
                  "data": {"npoints": npoints, "root": f"data/{k}", "num_workers": k % 3},
                  "train": {"batch_size": rng.choice((32, 32, 32, 16)), "seed": 0,
                            "max_steps_per_epoch": rng.choice((None, None, None, 5))},
                  "optim": {"lr": rng.choice((5e-4, 1e-3)), "betas": [0.9, 0.999]},
                  "schedule": {"epochs": 301}}
        if k % 9 == 4:
            config["optim"].update(weight_decay=0.1, eps=1e-6, grad_clip=None)
        setups.append({
            "setup_id": f"{k:02d}" + "%010x" % rng.getrandbits(40), "backbone": b, "method": m, "dataset": d,
            "variant": rng.choice(("", "", "", "aug", None)) if k >= 12 else "",
            "source": "synthetic" if rng.random() < 0.15 and k >= 12 else "official",
            "val": rng.random() < 0.3, "vote": d == "modelnet40" and rng.random() < 0.5,
            "val_n": rng.choice((0, 0, 500)), "short": rng.choice((0, 0, 0, 100)),
            "no_data": rng.random() < 0.05, "class_counts": rng.random() < 0.8, "schema1": k in (20, 21),
            "params": rng.choice(({"total": 22_100_000, "trainable": 22_100_000 if m == "full" else 700_000},
                                  {"total": 1, "trainable": 700_000.5}, None, {"total": 3})),
            "epochs": rng.choice((301, 301, 301, 10, 300)),
            "pretrained": ({"sha256": "ab", "loaded": 100, "missing": 2, "skipped": rng.choice((0, 0, 0, 4))}
                           if pretrained else None),
            "config": config})
    # setups that differ from another only in their id (labelled by id), and one in four keys ("+N more")
    twin = dict(setups[30], setup_id="30twin" + "0" * 6)
    other = copy.deepcopy(setups[30])
    other.update(setup_id="30other" + "0" * 5)
    other["config"]["optim"].update(lr=0.3, eps=0.1, weight_decay=0.2)
    other["config"]["train"]["batch_size"] = 8
    setups += [twin, other, dict(setups[31], setup_id="31twin" + "0" * 6)]
    return setups


def bad_files() -> dict[str, bytes | None]:
    """Run folder name -> bytes of its result.json (None: a directory in its place)."""
    good = {"schema": 2, "run_id": "r", "status": "done", "backbone": "point_mae", "method": "full",
            "dataset": "modelnet40", "variant": "", "data_source": "official", "seed": 0,
            "metrics": {"acc_last": 90.0}}

    def edit(**kv):
        r = {**copy.deepcopy(good), **kv}
        return json.dumps({k: v for k, v in r.items() if v is not ...}).encode()

    return {"bad-list": b"[1, 2]", "bad-binary": b"\x89PNG\x00\xff\xfe", "bad-empty": b"",
            "bad-truncated": edit()[:-7], "bad-directory": None,
            "bad-nan": edit().replace(b'"acc_last": 90.0', b'"acc_last": NaN'),
            "bad-infinity": edit().replace(b'"acc_last": 90.0', b'"acc_last": -Infinity'),
            "bad-string-acc": edit(metrics={"acc_last": "88.1"}), "bad-bool-acc": edit(metrics={"acc_vote": True}),
            "bad-schema": edit(schema=3), "bad-no-schema": edit(schema=...), "bad-lacks": edit(seed=..., dataset=...),
            "bad-status": edit(status="running"), "bad-source": edit(data_source="other"),
            "bad-run-id": edit(run_id=7), "bad-variant": edit(variant=2), "bad-seed-bool": edit(seed=True),
            "bad-seed-float": edit(seed=1.0), "bad-no-metrics": edit(metrics=...), "bad-metrics-list": edit(metrics=[1]),
            "bad-params": edit(params=[1]), "bad-data": edit(data="x"), "bad-wall": edit(wall_time_s="1 h"),
            "bad-epochs": edit(epochs=False),
            "ok-bom": b"\xef\xbb\xbf" + edit(run_id="bom", seed=71),
            "ok-big-int": edit(run_id="big", seed=2 ** 70),
            "ok-string-error": edit(run_id="str-err", status="failed", metrics=None, error="plain text error"),
            "ok-none-variant": edit(run_id="none-variant", variant=None, seed=72)}


def write_golden_runs(runs: Path) -> None:
    """The records and bad files of the golden test under ``runs`` (deterministic)."""
    rng = random.Random(20261130)
    setups = _setups(rng)
    i = 0
    for setup in setups:
        for seed in range(rng.choice((1, 2, 3, 5, 8, 12))):
            for _ in range(2 if rng.random() < 0.06 else 1):      # a seed run twice
                rec = _record(rng, i, setup, seed)
                i += 1
                results.write_record(runs / rec["run_id"] / "result.json", rec)
    for name, data in bad_files().items():
        path = runs / name / "result.json"
        path.parent.mkdir(parents=True)
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
    (runs / "no-record-yet").mkdir()
    (runs / ".hidden").mkdir()
    (runs / ".hidden" / "result.json").write_text("not json")


def golden_outputs(tmp: Path) -> dict[str, bytes]:
    runs = tmp / "runs"
    write_golden_runs(runs)
    outputs, t = results.build_outputs(runs, tmp / "out", REFERENCE, plots_=False)
    files = {path.name: data for path, data in outputs.items()}
    files["problems.txt"] = "".join(p.replace(str(runs), "<runs>") + "\n" for p in t.problems).encode()
    return files


def test_tables_output_is_byte_identical_to_the_golden_files(tmp_path):
    got = golden_outputs(tmp_path)
    assert sorted(got) == sorted(p.name for p in GOLDEN.iterdir())
    for name, data in got.items():
        assert data == (GOLDEN / name).read_bytes(), f"{name} differs from tests/golden/tables/{name}"


def test_rows_read_while_loading_give_the_same_tables_as_a_later_pass(tmp_path):
    """``tables`` reads each record's row while loading (``load_records_and_rows``); computing
    from the records alone (``compute(records)``) gives the same frames and markdown."""
    import pandas as pd

    write_golden_runs(tmp_path / "runs")
    records, rows, problems = results.load_records_and_rows(tmp_path / "runs", results.tables.record_row)
    assert (records, problems) == results.load_records(tmp_path / "runs")
    assert len(rows) == len(records) and all((row is None) == (r["status"] == "failed") for r, row in zip(records, rows))
    reference = results.load_reference(REFERENCE)
    a, b = results.compute(records, problems, rows), results.compute(records, problems)
    for x, y in ((a.runs, b.runs), (a.setups, b.setups), (a.pairs, b.pairs)):
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    assert a.markdown(reference) == b.markdown(reference) == (GOLDEN / "tables.md").read_text()[len("# Results\n\n"):]


def test_golden_records_cover_what_they_are_meant_to(tmp_path):
    """The golden set is varied: the guard above is only as good as what it exercises."""
    got = golden_outputs(tmp_path)
    md, problems = got["tables.md"].decode(), got["problems.txt"].decode().splitlines()
    summary = got["summary.csv"].decode()
    assert len(problems) == 25 and "Not comparable to the paper" in md and "counted once" in md
    assert "more failed runs" in md and "(+" in md and "setup run-" in md and "cfg-" in summary
    for reason in ("synthetic data", "random init", "keys not loaded", "partial data", "of 301 epochs",
                   "steps per epoch", "batch 16", "points (recipe", "no data counts"):
        assert reason in md, reason
    assert "matches or beats" in md or "worse" in md or "inconclusive" in md


if __name__ == "__main__":   # regenerate the golden files (review the diff before committing)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, data in golden_outputs(Path(tmp)).items():
            (GOLDEN / name).write_bytes(data)
    sys.exit(0)
