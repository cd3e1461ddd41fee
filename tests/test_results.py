"""Result records -> tables: one setup per row, comparability, paired statistics, costs, README."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import pytest

from harness import results
from harness.cli import tables as tables_cli
from harness.results import plots, stats

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "paper.csv"
README = ("# Project\r\n\nIntro ünïcode ✓\n\n## Results\n" + results.README_START + "\nold tables\n"
          + results.README_END + "\n\n## After\ntrailing text without newline").encode()
OFFICIAL_PB = {"train": 11416, "val": 0, "test": 2882, "class_counts": {"test": [100] * 14 + [1482]}}


def record(run_id, acc=85.0, *, backbone="point_mae", method="point_peft", dataset="scanobjectnn_pb_t50_rs",
           variant="", data_source="official", seed=0, status="done", trainable=700_000, acc_best_val=None,
           setup="S1", npoints=2048, pretrained=True, data=OFFICIAL_PB, epochs=301, compute=3600.0):
    done = status == "done"
    return {
        "schema": 2, "run_id": run_id, "setup_id": setup, "status": status, "experiment": "test",
        "backbone": backbone, "method": method, "dataset": dataset, "variant": variant,
        "data_source": data_source, "seed": seed,
        "metrics": {"acc_last": acc - 1, "acc_best_test": acc, "best_test_epoch": 10,
                    "acc_best_val": acc_best_val, "best_val_epoch": 9 if acc_best_val else None,
                    "acc_vote": None} if done else None,
        "params": {"total": 22_800_000, "trainable": trainable, "with_grad": trainable},
        "epochs": epochs, "wall_time_s": 1.0, "compute_time_s": compute, "segments": 1, "seconds_per_epoch": 12.0,
        "train_samples_per_s": 100.0, "peak_memory_bytes": 2_000_000_000, "device": "cpu", "world_size": 1,
        "git_commit": "0" * 7, "packages": {"torch": "2.13.0"},
        "config": {"model": {"pretrained": "ckpt.pth" if pretrained else None},
                   "data": {"npoints": npoints, "root": "x"}, "train": {"batch_size": 32, "seed": seed}},
        "data": data, "pretrained": {"sha256": "ab", "loaded": 10, "missing": 2, "skipped": 0} if pretrained else None,
        "config_hash": "abc", "start_time": "2026-01-01T00:00:00+00:00", "end_time": f"2026-01-01T00:0{seed % 10}:00",
        "error": None if done else {"type": "RuntimeError", "message": "boom", "where": "train.py:1"},
    }


def write_runs(runs: Path, records) -> Path:
    for r in records:
        results.write_record(runs / r["run_id"] / "result.json", r)
    return runs


def compute(records):
    return results.compute(records)


def markdown(records):
    return compute(records).markdown(results.load_reference(REFERENCE))


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    tables_cli.register(parser.add_subparsers())
    args = parser.parse_args(["tables", *map(str, argv)])
    return args.func(args)


def section(md: str, title: str) -> str:
    return md.split(f"## {title}\n")[1].split("\n## ")[0]


def test_one_setup_per_row_and_n_counts_distinct_seeds():
    recs = [record(f"r{i}", acc, seed=i) for i, acc in enumerate([80.0, 82.0, 84.0])]
    s = compute(recs).setups
    assert len(s) == 1
    row = s.iloc[0]
    assert (row.n, row.legacy_mean, row.legacy_std) == (3, 82.0, 2.0)     # sample std (ddof=1)
    assert row.honest_mean == 81.0 and row.honest_kind == "last"
    assert row.comparable and math.isclose(row.compute_h, 3.0) and row.peak_memory_GB == 2.0


def test_two_setups_differing_only_in_npoints_give_two_labelled_rows():
    recs = [record("a", 80.0, setup="A", npoints=2048), record("b", 60.0, setup="B", npoints=64)]
    recs[1]["config"]["data"]["npoints"] = 64
    t = compute(recs)
    assert len(t.setups) == 2
    assert set(t.setups.label) == {"npoints=2048", "npoints=64"}
    md = t.markdown(results.load_reference(REFERENCE))
    assert "npoints=64" in section(md, "Not comparable to the paper")        # 64 points is not the recipe
    assert "64 points (recipe 2048)" in md
    assert "80.00 (n=1)" in section(md, "ScanObjectNN PB_T50_RS (comparable to the paper)")


def test_full_and_peft_runs_are_never_pooled():
    recs = [record("f", 80.0, method="full", trainable=22_100_000, setup="F"), record("p", 86.0, setup="P")]
    s = compute(recs).setups
    assert sorted(s.trainable_M.round(2)) == [0.7, 22.1]


def test_duplicate_seed_is_flagged_and_counted_once():
    recs = [record("a", 80.0, seed=0), record("b", 90.0, seed=0), record("c", 84.0, seed=1)]
    t = compute(recs)
    assert t.setups.iloc[0].n == 2 and t.setups.iloc[0].legacy_mean == 82.0
    assert any("2 runs of seed 0" in n and n.startswith("error:") for n in t.notes)
    assert "2 runs of seed 0" in section(markdown(recs), "Notes")


def test_random_init_partial_data_and_short_runs_are_not_comparable_with_reasons():
    recs = [record("r", 50.76, pretrained=False, setup="R", epochs=6,
                   data={"train": 127, "val": 0, "test": 65, "class_counts": {"test": [33, 32]}},
                   dataset="modelnet40")]
    md = markdown(recs)
    part = section(md, "Not comparable to the paper")
    assert "random init (no pre-trained checkpoint)" in part
    assert "partial data: 127 of 9,843 train, 65 of 2,468 test samples" in part
    assert "6 of 301 epochs" in part
    assert "| 50.00 " in part and "50.77" in part    # chance of 2 present classes, majority 33/65
    assert "50.76" not in section(md, "ModelNet40 (comparable to the paper)")


def test_synthetic_runs_are_never_beside_paper_numbers():
    md = markdown([record("s", 99.0, data_source="synthetic", setup="Z")])
    assert "99.00" in section(md, "Not comparable to the paper") and "synthetic data" in md
    for title in ("ScanObjectNN PB_T50_RS", "ModelNet40"):
        assert "99.00" not in section(md, f"{title} (comparable to the paper)")


def test_paired_table_matches_the_hand_computed_mean_and_interval():
    full = [record(f"f{s}", acc, method="full", setup="F", seed=s) for s, acc in enumerate([80.0, 81.0, 82.0])]
    peft = [record(f"p{s}", acc, setup="P", seed=s) for s, acc in enumerate([81.0, 83.0, 85.0])]
    pairs = compute(full + peft).pairs
    assert len(pairs) == 1
    row = pairs.iloc[0]
    # diffs 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> 2 ± 4.302653 / sqrt(3) = 2 ± 2.484138
    assert row.n == 3 and math.isclose(row.legacy_mean, 2.0)
    assert math.isclose(row.legacy_low, 2 - 2.484138, abs_tol=1e-5)
    assert math.isclose(row.legacy_high, 2 + 2.484138, abs_tol=1e-5)
    assert row.legacy_verdict == "matches or beats"       # lower end -0.48 is above -0.5
    md = section(markdown(full + peft), "PEFT minus full fine-tuning, paired by seed")
    assert "+2.00 [-0.48, +4.48]" in md


def test_t_quantiles_and_verdicts():
    assert math.isclose(stats.t_quantile(0.975, 1), 12.7062, abs_tol=1e-3)
    assert math.isclose(stats.t_quantile(0.975, 10), 2.2281, abs_tol=1e-3)
    assert stats.verdict(-0.4, 2.0) == "matches or beats"
    assert stats.verdict(-3.0, -0.6) == "worse"
    assert stats.verdict(None, None).startswith("no interval")


def test_honest_and_legacy_side_by_side():
    recs = [record("v", 85.0, acc_best_val=83.5)]
    row = compute(recs).setups.iloc[0]
    assert (row.honest_mean, row.honest_kind, row.legacy_mean) == (83.5, "best val", 85.0)
    assert "83.50 (n=1, best val)" in markdown(recs)


def test_failed_runs_are_counted_not_averaged():
    recs = [record("ok", 80.0), record("bad", status="failed", seed=1)]
    t = compute(recs)
    assert t.setups.iloc[0].n == 1 and t.setups.iloc[0].n_failed == 1
    assert "RuntimeError: boom" in section(t.markdown(results.load_reference(REFERENCE)), "Failed runs (not counted above)")


def test_runs_plot_has_one_point_per_run():
    recs = [record(f"s{i}", 50.0 + i, data_source="synthetic", setup=f"Z{i % 2}", seed=i) for i in range(5)]
    t = compute(recs)
    fig = plots.runs_figure(t.runs, "synthetic")
    points = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert points == 5


def test_cli_leaves_the_readme_alone_unless_asked(tmp_path):
    runs = write_runs(tmp_path / "runs", [record("a", 85.0), record("s", 70.0, data_source="synthetic", setup="Z")])
    readme = tmp_path / "README.md"
    readme.write_bytes(README)
    assert run_cli("--runs", runs, "--out", tmp_path / "out", "--reference", REFERENCE, "--no-plots") == 0
    assert readme.read_bytes() == README
    assert (tmp_path / "out" / "tables.md").is_file() and (tmp_path / "out" / "summary.csv").is_file()
    assert run_cli("--runs", runs, "--out", tmp_path / "out", "--reference", REFERENCE, "--no-plots",
                   "--readme", readme) == 0
    new = readme.read_bytes()
    start, end = new.index(results.README_START.encode()), new.index(results.README_END.encode())
    assert new[:start] == README[:README.index(results.README_START.encode())]
    assert new[end:] == README[README.index(results.README_END.encode()):]
    assert b"### Not comparable to the paper" in new[start:end]


def test_readme_without_markers_is_an_error_and_nothing_is_written(tmp_path):
    runs = write_runs(tmp_path / "runs", [record("a")])
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(results.MarkersMissing, match="README.md: needs exactly one"):
        run_cli("--runs", runs, "--out", tmp_path / "out", "--reference", REFERENCE, "--readme", readme)
    assert not (tmp_path / "out").exists()


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    results.write_bytes_atomic(path, b"one")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        results.write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_schema_1_records_still_load_with_a_setup_from_their_config(tmp_path):
    old = record("old", 80.0)
    old["schema"] = 1
    del old["setup_id"], old["data"]
    t = compute([old])
    assert t.setups.iloc[0].setup_id.startswith("cfg-")
    assert "record has no data counts" in t.setups.iloc[0].reasons
    json.dumps(t.setups.to_dict())  # plain data


def test_the_tables_command_never_imports_torch(tmp_path):
    """`run_all.py tables` (and its --help) import only the tables path: no torch, no models."""
    import subprocess
    import sys

    from conftest import REPO

    runs = tmp_path / "runs"
    results.write_record(runs / "a" / "result.json", record("a"))
    code = ("import sys; from harness.cli import main; "
            f"rc = main(['tables', '--runs', {str(runs)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-plots']); "
            "print('torch' in sys.modules, 'models.classifier' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split()[-3:] == ["False", "False", "0"], out.stderr
    assert (tmp_path / "out" / "tables.md").is_file()


def test_method_titles_are_read_without_importing_and_match_the_registry():
    from models.peft import registry

    titles = registry.titles()
    assert list(titles.items()) == [(name, m.display) for name, m in registry.methods().items()]
    assert titles["point_peft"] == "Point-PEFT" and list(titles)[0] == "full"
