"""``bench --merge`` (one report from separate runs), partial reports of stopped runs, and the
``--precision`` / ``--compile`` narrowing of the CUDA cases. No GPU needed: the reports are
built from the epoch part's own entry maker."""
from __future__ import annotations

import json
import re

import pytest

from harness.bench import epoch_cases, model_cases, run_bench
from harness.bench import report as bench_report
from tests.test_bench import run_cli, tiny_epoch_specs


def epoch_entry(backbone, method, seconds, peak, precision="bf16", compiled=False, samples=11416):
    spec = {"backbone": backbone, "method": method, "precision": precision, "compile": compiled, "batch": 32,
            "npoints": 2048, "samples": samples}
    steps = samples // 32
    result = {"epoch_s": seconds, "epoch_cpu_s": seconds, "samples": steps * 32, "steps": steps,
              "samples_per_s": steps * 32 / seconds, "peak_memory_bytes": peak, "memory_method": "test"}
    return epoch_cases._entry(spec, "ok", "", result)


def report(epoch, **over):
    rep = {"schema": bench_report.SCHEMA_VERSION, "device": "cuda", "device_name": "NVIDIA H200",
           "date": "2026-11-30", "created": "2026-11-30T21:00:00+00:00", "torch": "2.11.0", "python": "3.12.3",
           "threads": 16, "quick": False, "parts": ["epoch"], "git_commit": "abc1234", "load_average": [0.1] * 3,
           "command": "python run_all.py bench --device cuda --epoch", "model_batch": None,
           "ops": [], "models": [], "tooling": [], "epoch": epoch, "scaling": [], "targets": [], "wall_s": 10.0}
    rep.update(over)
    rep["targets"] = bench_report.build_targets(rep)
    return rep


def target(rep, name):
    return next(t for t in rep["targets"] if t["name"] == name)


def test_merge_scores_targets_over_cases_measured_in_separate_runs():
    full = report([epoch_entry("point_mae", "full", 8.0, 4 << 30)])
    peft = report([epoch_entry("point_mae", "point_peft", 6.0, 1 << 30)], command="python run_all.py bench --x")
    # alone, neither run can score the Point-PEFT / full targets
    assert target(full, "epoch_peft_vs_full[point_mae]")["status"] == "not-measured"
    merged = bench_report.merge_reports([full, peft], ["a/full.json", "b/peft.json"])
    assert [e["method"] for e in merged["epoch"]] == ["full", "point_peft"]
    assert merged["merged_from"] == ["a/full.json", "b/peft.json"] and merged["wall_s"] == 20.0
    assert merged["command"] == "python run_all.py bench --device cuda --epoch ; python run_all.py bench --x"
    ratio = target(merged, "epoch_peft_vs_full[point_mae]")
    assert ratio["status"] == "pass" and ratio["value"] == pytest.approx(0.75)
    assert target(merged, "epoch_peft_seconds[point_mae]")["status"] == "fail"   # 6 s > 5 s
    assert target(merged, "epoch_peft_memory[point_mae]")["value"] == pytest.approx(0.25)
    assert "partial" not in merged
    md = bench_report.render_markdown(merged)
    assert "Merged by `python run_all.py bench --merge` from 2 runs" in md and "full.json, peft.json" in md


def test_merge_refuses_different_setups_repeated_cases_and_non_reports():
    a = report([epoch_entry("point_mae", "full", 8.0, 4 << 30)])
    other_gpu = report([epoch_entry("point_mae", "point_peft", 6.0, 1 << 30)], device_name="NVIDIA A100")
    with pytest.raises(ValueError, match=r"b.json: device_name is 'NVIDIA A100' but a.json has 'NVIDIA H200'"):
        bench_report.merge_reports([a, other_gpu], ["a.json", "b.json"])
    with pytest.raises(ValueError, match=r"b.json: git_commit"):
        bench_report.merge_reports([a, report([], git_commit="abc1234+dirty")], ["a.json", "b.json"])
    tuned = report([], allocator_env={"THP_MEM_ALLOC_ENABLE": "1"})   # a run with other malloc settings
    with pytest.raises(ValueError, match=r"b.json: allocator_env is \{'THP_MEM_ALLOC_ENABLE': '1'\} but a.json"):
        bench_report.merge_reports([a, tuned], ["a.json", "b.json"])
    with pytest.raises(ValueError, match=r"b.json: epoch case 'point_mae / full \(bf16, compile off\)' is also in a.json"):
        bench_report.merge_reports([a, report([epoch_entry("point_mae", "full", 9.0, 4 << 30)])], ["a.json", "b.json"])
    with pytest.raises(ValueError, match=r"b.json: not a bench report \(missing top-level key 'device'\)"):
        bench_report.merge_reports([a, {k: v for k, v in a.items() if k != "device"}], ["a.json", "b.json"])
    with pytest.raises(ValueError, match="nothing to merge"):
        bench_report.merge_reports([], [])


def test_merge_cli_writes_the_report_and_names_bad_files_in_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report([epoch_entry("point_bert", "full", 8.0, 4 << 30)])))
    b.write_text(json.dumps(report([epoch_entry("point_bert", "point_peft", 4.0, 1 << 30)], partial=True)))
    out = tmp_path / "out"
    assert run_cli(["bench", "--merge", str(a), str(b), "--out", str(out), "--no-readme"]) == 0
    captured = capsys.readouterr()
    assert "merged from partial reports" in captured.err
    merged = json.loads((out / "cuda-2026-11-30-epoch.json").read_text())
    assert merged["partial"] is True and merged["merged_from"] == [str(a), str(b)]
    assert target(merged, "epoch_peft_seconds[point_bert]")["status"] == "pass"
    assert "Partial: the runs stopped" in (out / "cuda-2026-11-30-epoch.md").read_text()

    from harness.cli import UserError
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, msg in (([str(a), str(tmp_path / "missing.json")], "missing.json does not exist"),
                      ([str(a), str(bad)], "cannot read"),
                      ([str(a), str(a)], "is also in")):
        with pytest.raises(UserError, match=msg) as err:
            run_cli(["bench", "--merge", *args, "--out", str(out), "--no-readme"])
        assert "\n" not in str(err.value)


def test_precision_and_compile_narrow_the_cuda_cases_and_are_refused_on_the_cpu():
    specs = epoch_cases.epoch_specs("cuda", 64, "/x", ["point_mae"], precisions=["bf16"], compiles=[False])
    assert {(s["precision"], s["compile"]) for s in specs} == {("bf16", False)} and len(specs) == 2
    assert len(epoch_cases.epoch_specs("cuda", 64, "/x", ["point_mae"])) == 8
    cases = model_cases.model_specs("cuda", False, ["point_mae"], ["full", "point_peft"], precisions=["fp32"])
    assert {s["precision"] for s in cases} == {"fp32"} and len(cases) == 4   # full + Point-PEFT with 2 levers

    from harness.cli import UserError
    with pytest.raises(UserError, match="CUDA cases"):
        run_cli(["bench", "--device", "cpu", "--epoch", "--precision", "bf16"])
    with pytest.raises(SystemExit):
        run_cli(["bench", "--device", "cuda", "--compile", "maybe"])


def test_each_finished_case_is_saved_so_a_stopped_run_keeps_it(monkeypatch, tmp_path):
    monkeypatch.setattr(epoch_cases, "BATCH", 4)
    monkeypatch.setattr(epoch_cases, "epoch_specs", tiny_epoch_specs)
    snapshots = []
    rep = run_bench("cpu", quick=True, only=["epoch"], log=lambda m: None, epoch_samples=8,
                    save_partial=lambda snap: snapshots.append(json.loads(json.dumps(snap))))
    assert [len(s["epoch"]) for s in snapshots] == [1, 2] and all(s["partial"] for s in snapshots)
    assert all(bench_report.validate_report(s) == [] for s in snapshots)
    assert "partial" not in rep and len(rep["epoch"]) == 2 and type(rep["epoch"]) is list

    # the CLI: a run stopped after its first case leaves the partial report; a finished run removes it
    real = epoch_cases.run_epochs

    def stopped(*args, entries=None, **kwargs):
        entries.append(epoch_entry("point_mae", "full", 1.0, 1, precision="fp32", samples=8))
        raise KeyboardInterrupt
    monkeypatch.setattr(epoch_cases, "run_epochs", stopped)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_cli(["bench", "--device", "cpu", "--epoch", "--epoch-samples", "32", "--out", str(out), "--no-readme"])
    [partial] = out.glob("*.partial.json")
    kept = json.loads(partial.read_text())
    assert kept["partial"] is True and [e["method"] for e in kept["epoch"]] == ["full"]
    monkeypatch.setattr(epoch_cases, "run_epochs", real)
    assert run_cli(["bench", "--device", "cpu", "--epoch", "--epoch-samples", "32", "--out", str(out),
                    "--no-readme"]) == 0
    assert not list(out.glob("*.partial.json")) and len(list(out.glob("cpu-*-epoch.json"))) == 1


def test_step_profile_times_fps_and_refuses_unknown_names(capsys):
    from harness.bench import step_profile

    assert step_profile.main(["--device", "cpu", "--batch", "1", "--repeats", "1", "--fps-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("FPS ") and line.endswith("same indices: True") for line in lines)
    assert step_profile.main(["--backbone", "point_mae,nope"]) == 2
    assert "unknown backbone(s) ['nope']" in capsys.readouterr().err
    assert step_profile.main(["--method", "lora9"]) == 2


def test_product_shares_split_the_self_time_into_products_attention_and_the_rest():
    from types import SimpleNamespace as Event

    from harness.bench.step_profile import product_shares

    events = [Event(key="aten::mm", self_cpu_time_total=500.0), Event(key="aten::addmm", self_cpu_time_total=100.0),
              Event(key="aten::_scaled_dot_product_flash_attention_for_cpu", self_cpu_time_total=100.0),
              Event(key="aten::_scaled_dot_product_flash_attention_for_cpu_backward", self_cpu_time_total=100.0),
              Event(key="aten::gelu", self_cpu_time_total=200.0)]
    products, attention, total = product_shares(events)
    assert (products, attention) == pytest.approx((0.6, 0.2)) and total == pytest.approx(1e-3)
    assert product_shares([]) == (0.0, 0.0, 0.0)


def test_step_profile_reports_the_product_share_of_a_training_step_and_an_eval_forward(capsys):
    from harness.bench import step_profile

    assert step_profile.main(["--device", "cpu", "--batch", "2", "--repeats", "1", "--backbone", "point_bert",
                              "--method", "full", "--profile"]) == 0
    out = capsys.readouterr().out.splitlines()
    counts = [line for line in out if "multiply-adds per cloud" in line]
    ours, official, ratio = (float(v) for v in re.search(r"([\d.]+) G multiply-adds .*, ([\d.]+) G with .*\(([\d.]+)x\)",
                                                         counts[0]).groups())
    # the official encoder's [global; local] conv per point: about an eighth more work on Point-BERT
    assert len(counts) == 1 and 5.0 < ours < official < 8.0 and 0.85 < ratio < 0.92, counts
    shares = [line for line in out if "matrix products" in line]
    assert [line.split(":")[0] for line in shares] == ["point_bert/full training step", "point_bert/full eval forward"]
    for line in shares:  # e.g. "... matrix products 71% of the self CPU time, attention kernel 2%, ... at most 1.37x"
        products, attention = int(re.search(r"products (\d+)%", line)[1]), int(re.search(r"kernel (\d+)%", line)[1])
        assert 20 <= products <= 100 and 0 <= attention < 50, line
        bound = float(re.search(r"at most ([\d.]+)x", line)[1])
        assert bound == pytest.approx(100 / (products + attention), rel=0.05), line


def test_multiply_adds_count_the_frozen_query_encoder_and_the_frozen_stem(monkeypatch):
    from harness.bench.step_profile import multiply_adds
    from models import layers

    # the same count whether the frozen layers would run oneDNN's inner product or F.linear
    # (the counter sees only the latter), and the flag is left as it was
    monkeypatch.setattr(layers, "_ONEDNN_LINEAR", True)
    with_onednn = multiply_adds("point_bert", "point_peft")
    assert layers._ONEDNN_LINEAR is True
    monkeypatch.setattr(layers, "_ONEDNN_LINEAR", False)
    assert multiply_adds("point_bert", "point_peft") == pytest.approx(with_onednn)
    ours, official = with_onednn
    # the frozen stem's encoder is counted in the official form too (more work than ours)
    assert 5.0e9 < ours < official < 7.5e9, with_onednn


def _valid():
    return report([epoch_entry("point_mae", "full", 8.0, 4 << 30)])


def _models_entry():
    return {"name": "point_mae / full (fp32)", "backbone": "point_mae", "method": "full", "precision": "fp32",
            "batch": 32, "status": "ok", "value": 100.0, "unit": "samples/s", "notes": "",
            "values": {"peak_train_memory_bytes": 1.0}}


@pytest.mark.parametrize("change", [
    lambda r: r.update(epoch=5), lambda r: r.update(scaling=True), lambda r: r.update(wall_s="x"),
    lambda r: r.update(created=5), lambda r: r.update(command=["a"]), lambda r: r.update(parts=5),
    lambda r: r.update(parts=["models", "nope"]), lambda r: r.update(load_average=5),
    lambda r: r.update(load_average=["x"]), lambda r: r.update(models=[{**_models_entry(), "batch": [32]}]),
    lambda r: r.update(models=[{**_models_entry(), "values": None}]),
    lambda r: r.update(models=[{**_models_entry(), "precision": None}]),
    lambda r: r.update(models=[{**_models_entry(), "values": {"peak_train_memory_bytes": "x"}}]),
    lambda r: r.update(ops=[{"name": "x", "case": None, "impl": "ours", "status": "ok", "value": 1.0,
                             "unit": "s", "notes": ""}]),
    lambda r: r["epoch"][0].pop("precision"),
])
def test_merge_of_a_malformed_report_is_one_error_line_not_a_traceback(tmp_path, change):
    from harness.cli import UserError

    bad = _valid()
    bad["epoch"][0]["name"] = "another case"
    change(bad)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report([epoch_entry("point_mae", "point_peft", 6.0, 1 << 30)])))
    b.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="^--merge: ") as err:
        run_cli(["bench", "--merge", str(a), str(b), "--out", str(tmp_path / "out"), "--no-readme"])
    assert "\n" not in str(err.value)


def test_merge_refuses_to_overwrite_its_inputs_and_options_that_measure(tmp_path):
    from harness.cli import UserError

    epoch = tmp_path / "cuda-2026-11-30-epoch.json"
    epoch.write_text(json.dumps(_valid()))
    ops = tmp_path / "cuda-2026-11-30.json"
    ops.write_text(json.dumps(report([], parts=["ops"], ops=[{"name": "FPS", "case": "fps_2048_to_128",
                                      "impl": "ours", "status": "ok", "value": 1.0, "unit": "s", "notes": ""}])))
    with pytest.raises(UserError, match="would overwrite its input .*cuda-2026-11-30-epoch.json"):
        run_cli(["bench", "--merge", str(ops), str(epoch), "--out", str(tmp_path), "--no-readme"])
    assert json.loads(epoch.read_text()) == _valid()   # untouched
    assert run_cli(["bench", "--merge", str(ops), str(epoch), "--out", str(tmp_path / "m"), "--no-readme"]) == 0
    with pytest.raises(UserError, match="--device, --precision would be ignored; drop them"):
        run_cli(["bench", "--merge", str(ops), "--device", "cuda", "--precision", "bf16"])


def test_a_rerun_keeps_the_stopped_runs_partial_report_beside_its_own(monkeypatch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "cpu-2026-11-30-epoch.partial.json"
    earlier.write_text("{}")
    monkeypatch.setattr("harness.bench.report.output_paths",
                        lambda d, r: (d / "cpu-2026-11-30-epoch.json", d / "cpu-2026-11-30-epoch.md"))

    def one_case(*args, entries=None, **kwargs):
        entries.append(epoch_entry("point_mae", "full", 1.0, 1, precision="fp32", samples=32))
        raise KeyboardInterrupt
    monkeypatch.setattr(epoch_cases, "run_epochs", one_case)
    with pytest.raises(KeyboardInterrupt):
        run_cli(["bench", "--device", "cpu", "--epoch", "--out", str(out), "--no-readme"])
    moved = [p for p in out.iterdir() if p.name.startswith("cpu-2026-11-30-epoch.partial-")]
    assert len(moved) == 1 and moved[0].read_text() == "{}"
    assert json.loads(earlier.read_text())["partial"] is True


def test_partial_reports_score_only_the_parts_begun_and_cover_models_and_scaling(monkeypatch):
    from harness.bench import scaling, tooling_cases

    def fake_models(*args, entries=None, **kwargs):
        entries.append(_models_entry())
        entries.append({**_models_entry(), "name": "point_mae / point_peft (fp32)", "method": "point_peft"})
        return entries

    def fake_scaling(*args, entries=None, **kwargs):
        entries.append({**_models_entry(), "name": "s1", "axis": "batch"})
        return entries
    monkeypatch.setattr(model_cases, "run_models", fake_models)
    monkeypatch.setattr(scaling, "run_scaling", fake_scaling)
    monkeypatch.setattr(tooling_cases, "run_tooling", lambda quick, log: [])
    snaps = []
    run_bench("cpu", quick=True, only=["models", "tooling", "scaling"], log=lambda m: None,
              save_partial=lambda s: snaps.append(json.loads(json.dumps(s))))
    assert [s["parts"] for s in snaps] == [["models"], ["models"], ["models", "tooling"],
                                           ["models", "tooling", "scaling"]]
    assert snaps[1]["model_batch"] == 32 and len(snaps[3]["scaling"]) == 1
    tables = [t for t in snaps[0]["targets"] if t["name"].startswith("tables")]   # tooling not begun yet
    assert tables and all(t["status"] == "not-measured" and t["notes"] == "tooling part not run" for t in tables)


def test_git_commit_names_the_uncommitted_diff_except_the_benchs_own_outputs(monkeypatch, tmp_path):
    import subprocess

    from harness.bench import common

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "README.md").write_text("readme\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    clean = common.git_commit()
    assert clean and "+" not in clean
    (tmp_path / "README.md").write_text("bench block\n")     # the bench's own output: still clean
    assert common.git_commit() == clean
    (tmp_path / "code.py").write_text("a = 2\n")
    first = common.git_commit()
    (tmp_path / "code.py").write_text("a = 3\n")
    second = common.git_commit()
    assert first.startswith(clean + "+dirty.") and second.startswith(clean + "+dirty.") and first != second


def test_the_epoch_memory_target_notes_the_increase_beside_the_absolute_peak():
    full = epoch_entry("point_mae", "full", 8.0, 4 << 30)
    peft = epoch_entry("point_mae", "point_peft", 6.0, 3 << 30)
    full["values"]["peak_increase_bytes"], peft["values"]["peak_increase_bytes"] = 2 << 30, 1 << 29
    memory = target(report([full, peft]), "epoch_peft_memory[point_mae]")
    assert memory["value"] == pytest.approx(0.75) and memory["status"] == "fail"   # scored on the absolute peak
    assert "0.50 vs 2.00 GiB (0.25x)" in memory["notes"]
    md = bench_report.render_markdown(report([full, peft]))
    assert "peak increase (CUDA)" in md and "512 MiB" in md


def test_the_allocator_environment_is_recorded_and_named_in_the_header():
    from harness.bench.common import allocator_env

    env = {"MALLOC_MMAP_THRESHOLD_": "4194304", "THP_MEM_ALLOC_ENABLE": "1", "PATH": "/bin", "MALLOCX": "no",
           "LD_PRELOAD": "/usr/lib/libtcmalloc.so", "OMP_NUM_THREADS": "2"}
    assert allocator_env(env) == {"LD_PRELOAD": "/usr/lib/libtcmalloc.so", "MALLOC_MMAP_THRESHOLD_": "4194304",
                                  "THP_MEM_ALLOC_ENABLE": "1"}
    assert allocator_env({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "CUDA_VISIBLE_DEVICES": "0"}) == {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert allocator_env({"PATH": "/bin"}) == {}
    tuned = report([], allocator_env=allocator_env(env))
    assert bench_report.validate_report(tuned) == []
    header = bench_report.render_markdown(tuned).splitlines()[2].rstrip()
    assert header.endswith("; allocator environment `LD_PRELOAD=/usr/lib/libtcmalloc.so`, "
                           "`MALLOC_MMAP_THRESHOLD_=4194304`, `THP_MEM_ALLOC_ENABLE=1`.")
    assert "allocator" not in bench_report.render_markdown(report([], allocator_env={})).splitlines()[2]
    assert bench_report.validate_report(report([], allocator_env=["MALLOC_ARENA_MAX=1"])) == [
        "'allocator_env' must be an object, got list"]
    assert bench_report.validate_report(report([], allocator_env={"LD_PRELOAD": 1})) == [
        "'allocator_env' must map names to strings"]
