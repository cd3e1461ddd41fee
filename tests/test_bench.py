"""``run_all.py bench``: report schema, targets, markdown, README block; the exact fast FPS.

The bench itself is slow by design, so the CLI test shrinks every case (tiny clouds, a tiny
two-block Point-MAE, a small matrix and few records) and checks the plumbing; one test runs
the matrix expansion at its real size (1,000 runs).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess

import pytest
import torch

from harness.bench import model_cases, ops_cases, report as bench_report, tooling_cases, write_outputs
from harness.bench import run_bench
from harness.bench.common import ENTRY_STATUSES, STATUSES, cpu_name
from harness.cli import bench as bench_cli
from models import ops

TINY_MAE = {"num_group": 16, "group_size": 16, "trans_dim": 96, "depth": 2, "num_heads": 4, "encoder_dims": 96}
TINY_PEFT = {"prompt_layers": [0, 1], "cache_layers": [0, 1], "query_num_group": 8, "query_group_size": 16}


def tiny_specs(device, quick, backbones=None, methods=None, threads=None, precisions=None):
    base = {"backbone": "point_mae", "family": "scan", "num_classes": 15, "npoints": 256, "batch": 2,
            "precision": "fp32", "device": device, "warmup": 1, "steps": 1, "eval_warmup": 0, "eval_steps": 1,
            "bank_columns": 64, "seed": 0, "backbone_options": TINY_MAE, "threads": threads}
    return [{**base, "method": "full", "method_options": {}},
            {**base, "method": "point_peft", "method_options": TINY_PEFT},
            {**base, "backbone": "no_such_backbone", "method": "full", "method_options": {}}]


@pytest.fixture
def tiny_bench(monkeypatch):
    monkeypatch.setattr(ops_cases, "FPS_CASES", (("fps_2048_to_128", 2, 300, 16),))
    monkeypatch.setattr(ops_cases, "KNN_CASES", (("knn_32_of_2048", 2, 300, 16, 8),))
    monkeypatch.setattr(model_cases, "model_specs", tiny_specs)
    monkeypatch.setattr(tooling_cases, "MATRIX_RUNS", 30)
    monkeypatch.setattr(tooling_cases, "TABLE_RECORDS", 200)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="run_all.py")
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def check_schema(rep):
    assert bench_report.validate_report(rep) == []
    for key, kind in {"schema": int, "device": str, "device_name": str, "date": str, "torch": str,
                      "python": str, "threads": int, "quick": bool, "ops": list, "models": list,
                      "tooling": list, "targets": list}.items():
        assert isinstance(rep[key], kind), key
    for part in ("ops", "models", "tooling"):
        for e in rep[part]:
            assert {"name", "value", "unit", "notes", "status"} <= set(e)
            assert e["status"] in ENTRY_STATUSES
    for t in rep["targets"]:
        assert {"name", "value", "threshold", "unit", "status", "notes"} <= set(t)
        assert t["status"] in STATUSES


def test_quick_cli_writes_json_markdown_and_readme_block(tiny_bench, tmp_path, capsys):
    readme = tmp_path / "README.md"
    before, after = "# Project\n\nintro\n<!-- bench:cpu:start -->\n", "<!-- bench:cpu:end -->\n\n## More\n"
    readme.write_text(before + "old table\n" + after)
    out = tmp_path / "bench"
    assert run_cli(["bench", "--quick", "--device", "cpu", "--out", str(out), "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out

    [json_path] = out.glob("cpu-*-quick.json")
    [md_path] = out.glob("cpu-*-quick.md")
    rep = json.loads(json_path.read_text())
    check_schema(rep)
    assert rep["schema"] == 1 and rep["device"] == "cpu" and rep["quick"] is True
    assert json_path.name == f"cpu-{rep['date']}-quick.json"

    # ops: ours measured, missing libraries skipped with a note, never a crash
    ours = [e for e in rep["ops"] if e["impl"] == "ours"]
    assert {e["case"] for e in ours} == {"fps_2048_to_128", "knn_32_of_2048"}
    assert all(e["status"] == "ok" and e["value"] > 0 for e in ours)
    for e in rep["ops"]:
        if e["status"] == "skipped":
            assert e["notes"].startswith("skipped:") and e["value"] is None

    # models: full and point_peft measured in fresh processes, the broken case reported as an error
    by_method = {(e["backbone"], e["method"]): e for e in rep["models"]}
    for method in ("full", "point_peft"):
        e = by_method[("point_mae", method)]
        assert e["status"] == "ok", e["notes"]
        assert e["values"]["train_samples_per_s"] > 0 and e["values"]["eval_samples_per_s"] > 0
        assert e["values"]["peak_train_memory_bytes"] >= 0 and e["batch"] == 2
        # one profiled step's peak of live tensors: recorded, and small at batch 2
        assert 0 < e["values"]["peak_train_tensor_bytes"] < 2**30
        # training runs first (as in a training run); eval's peak is counted in live tensors, as a GPU does
        assert 0 < e["values"]["peak_eval_memory_bytes"] <= e["values"]["peak_train_tensor_bytes"]
        assert e["memory_method"].startswith("training first")
        assert e["values"]["train_ops"] > 100                   # one training step's working ops
    assert by_method[("point_mae", "point_peft")]["notes"].startswith("random memory bank")
    assert "ops / train step" in md_path.read_text()
    assert by_method[("no_such_backbone", "full")]["status"] == "error"

    # tooling (shrunk sizes here): measured or skipped with a reason
    assert {e["id"] for e in rep["tooling"]} == {"matrix", "status", "tables"}
    for e in rep["tooling"]:
        assert e["status"] == "ok" or e["notes"].startswith("skipped:"), e["notes"]

    targets = {t["name"]: t for t in rep["targets"]}
    assert targets["peft_memory[point_mae]"]["status"] in ("pass", "fail")
    # batch 2 has no official reference figure: the speed targets are listed, not scored
    speed = [t for t in rep["targets"] if t["name"].startswith("speed_vs_official[")]
    assert speed and all(t["status"] == "not-measured" and "batch 32" in t["notes"] for t in speed)
    fps = targets["fps_2048_to_128_vs_fpsample"]
    if importlib.util.find_spec("fpsample"):
        assert fps["status"] in ("pass", "fail") and fps["value"] > 0
    else:
        assert fps["status"] == "not-measured"
    for name in ("matrix_1000_expand_dry_run", "status_1000_slurm_runs", "tables_from_100000_records",
                 "tables_from_100000_records_again"):
        assert targets[name]["status"] in STATUSES

    md = md_path.read_text()
    for heading in ("## Bench: cpu", "### Targets", "### Ops", "### Models", "### Tooling"):
        assert heading in md
    assert "| target" in md and "point_peft" in md and "quick mode" in md
    assert "### Targets" in printed and str(json_path) in printed

    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after) and "old table" not in text
    assert "#### Targets" in text  # one heading level deeper inside the README


def test_readme_without_markers_is_a_note_not_an_error(tiny_bench, tmp_path):
    rep = run_bench("cpu", quick=True, only=["tooling"], log=lambda msg: None)
    check_schema(rep)
    assert rep["ops"] == [] and rep["models"] == []
    statuses = {t["name"]: t["status"] for t in rep["targets"]}
    assert statuses["peft_memory[(any backbone)]"] == "not-measured"
    assert statuses["fps_*_vs_fpsample"] == "not-measured"
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n<!-- bench:cuda:start -->\n<!-- bench:cuda:end -->\n")
    original = readme.read_bytes()
    done = write_outputs(rep, tmp_path / "out", readme)
    assert done["readme"] is None and "bench:cpu:start" in done["readme_note"]
    assert readme.read_bytes() == original
    assert done["json"].is_file() and done["markdown"].is_file()


def test_inject_block_keeps_every_byte_outside_the_markers():
    start, end = bench_report.readme_markers("cuda")
    readme = f"a\r\n{start}\r\nold\r\n{end}\r\nz <!-- bench:cpu:start -->\r\n".encode()
    out = bench_report.inject_block(readme, "new\nlines\n", start, end)
    assert out == f"a\r\n{start}\r\nnew\r\nlines\r\n{end}\r\nz <!-- bench:cpu:start -->\r\n".encode()
    with pytest.raises(bench_report.MarkersMissing):
        bench_report.inject_block(readme + start.encode(), "x", start, end)


def test_targets_thresholds_and_validation():
    rep = {"device": "cpu", "parts": ["ops", "models", "tooling"], "ops": [], "tooling": [], "models": [
        {"name": f"point_mae / {m}", "backbone": "point_mae", "method": m, "precision": "fp32", "batch": 32,
         "status": "ok", "value": 1.0, "unit": "samples/s", "notes": "",
         "values": {"peak_train_memory_bytes": mem, "peak_train_tensor_bytes": mem // 4}}
        for m, mem in (("full", 1000), ("point_peft", 520))]}
    targets = {t["name"]: t for t in bench_report.build_targets(rep)}
    rss, tensors = targets["peft_memory[point_mae]"], targets["peft_tensor_memory[point_mae]"]
    assert rss["value"] == 0.52 and rss["status"] == "fail"  # RSS and tensors scored apart
    assert tensors["value"] == 130 / 250 and tensors["status"] == "fail"
    rep["models"][1]["values"] = {"peak_train_memory_bytes": 500, "peak_train_tensor_bytes": 100}
    targets = {t["name"]: t for t in bench_report.build_targets(rep)}
    assert targets["peft_memory[point_mae]"]["value"] == 0.5 and targets["peft_memory[point_mae]"]["status"] == "pass"
    assert targets["peft_tensor_memory[point_mae]"]["value"] == 0.4
    del rep["models"][0]["values"]["peak_train_tensor_bytes"]  # not recorded: not measured, not 0
    tensors = next(t for t in bench_report.build_targets(rep) if t["name"] == "peft_tensor_memory[point_mae]")
    assert tensors["status"] == "not-measured" and "not recorded" in tensors["notes"]
    rep["device"] = "cuda"  # a GPU's peak is already the allocator's tensor peak: one target
    assert not any(t["name"].startswith("peft_tensor_memory") for t in bench_report.build_targets(rep))
    bad = {"schema": 1, "device": "cpu", "targets": [{"name": "x", "status": "maybe"}]}
    problems = bench_report.validate_report(bad)
    assert any("status 'maybe'" in p for p in problems) and any("'threads'" in p for p in problems)


def test_a_value_that_would_round_onto_its_threshold_is_printed_with_the_digits_that_tell_the_side():
    def shown(value, threshold, unit="x", comparison="<="):
        t = bench_report._target("t", "t", value, threshold, unit, comparison=comparison)
        return bench_report._target_value(t), t["status"]
    assert shown(0.5026, 0.5) == ("0.503 x", "fail")
    assert shown(0.4996, 0.5) == ("0.4996 x", "pass")
    assert shown(0.5, 0.5) == ("0.50 x", "pass")
    assert shown(0.55, 0.5) == ("0.55 x", "fail")
    assert shown(1.4999, 1.5, comparison=">=") == ("1.4999 x", "fail")
    assert shown(5.0004, 5.0, unit="s") == ("5.0004 s", "fail")
    assert shown(0.5000000001, 0.5) == ("0.5000000001 x", "fail")
    assert shown(None, 5.0, unit="s") == ("-", "not-measured")


def test_tooling_is_skipped_with_a_reason_when_the_harness_is_missing(monkeypatch):
    import sys

    import harness
    monkeypatch.delattr(harness, "matrix", raising=False)
    monkeypatch.setitem(sys.modules, "harness.matrix", None)
    entry = tooling_cases.bench_matrix(1, n_runs=10)
    assert entry["status"] == "skipped" and entry["notes"].startswith("skipped:") and entry["value"] is None


def test_tooling_expands_exactly_1000_distinct_runs_and_tabulates_records():
    matrix = tooling_cases.bench_matrix(1)  # the real size: 1,000 cells, trimmed by exclude
    assert matrix["status"] == "ok", matrix["notes"]  # every registered method, on its supported backbones
    assert matrix["values"]["runs"] == 1000 and matrix["value"] > 0
    tables = tooling_cases.bench_tables(1, n_records=1000)  # 10,000 in the bench; writing them is slow
    assert tables["status"] == "ok", tables["notes"]
    assert tables["values"]["records"] == 1000 and tables["value"] > 0 and tables["values"]["again_s"] > 0
    # a first run parses every record; again, unchanged ones come from the row cache
    assert tables["values"]["again_load_records_s"] < tables["values"]["load_records_s"]
    # the measured time includes what the command imports, and that is no torch
    assert 0 < tables["values"]["import_s"] < tables["value"] and "torch not imported" in tables["notes"]


def test_status_of_many_slurm_runs_asks_the_scheduler_in_batched_calls():
    """bench's status case: every run reads as running from a handful of squeue/sacct calls."""
    status = tooling_cases.bench_status(1, n_runs=200)
    assert status["status"] == "ok", status["notes"]
    assert status["values"]["runs"] == 200 and status["values"]["scheduler_calls"] <= 3


# ------------------------------------------------------------------ the exact fast FPS (speed work)

def _clouds(kind: str, n: int, dtype, gen) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(3, n, 3, generator=gen, dtype=dtype) * 2 - 1
    if kind == "grid":  # many exact distance ties
        return torch.randint(-2, 3, (3, n, 3), generator=gen).to(dtype)
    if kind == "near_origin":  # many points FPS must skip, some clouds with all of them skipped
        return (torch.rand(3, n, 3, generator=gen, dtype=dtype) * 2 - 1) * torch.tensor([0.01, 0.05, 1.0],
                                                                                    dtype=dtype)[:, None, None]
    base = torch.rand(3, max(n // 4, 1), 3, generator=gen, dtype=dtype)  # duplicates
    return base.repeat(1, 5, 1)[:, :n]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 5, 16, 100, 512, 513, 1100])
def test_fast_fps_gives_the_reference_indices(dtype, n):
    gen = torch.Generator().manual_seed(n)
    for kind in ("uniform", "grid", "near_origin", "duplicates"):
        xyz = _clouds(kind, n, dtype, gen)
        for m in sorted({1, 2, min(n, 24), n + 2} if n <= 16 else {1, 24}):
            want = ops.furthest_point_sample_reference(xyz, m)
            assert torch.equal(ops.furthest_point_sample_fast(xyz, m), want), (kind, n, m)
    assert torch.equal(ops.furthest_point_sample(xyz, 7), ops.furthest_point_sample_reference(xyz, 7))


@pytest.mark.parametrize("k", [1, 3, 4, 5, 8])
def test_knn_ties_across_the_kth_place_follow_the_stable_order(k):
    # distances 0, 1, 1, 1, 4, 4, 4, 9: ties straddle several k
    ref = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 2, 0], [0, 0, 2], [3, 0, 0]]])
    ref = ref[:, torch.tensor([5, 1, 7, 0, 3, 6, 2, 4])]
    query = torch.zeros(1, 1, 3)
    dist, idx = ops.knn(ref, query, k)
    d2 = (ref - query).pow(2).sum(-1)[:, None, :]
    assert idx.tolist() == d2.argsort(dim=-1, stable=True)[..., :k].tolist()
    assert torch.equal(dist, d2.gather(-1, idx).sqrt())


def test_fast_paths_accept_points_that_require_grad():
    xyz = (torch.rand(2, 64, 3) * 2 - 1).requires_grad_()
    idx = ops.furthest_point_sample(xyz, 8)
    assert torch.equal(idx, ops.furthest_point_sample_reference(xyz.detach(), 8))
    query = ops.gather_points(xyz, idx).detach() + 0.01  # off the points: no sqrt(0) in the gradient
    dist, nn_idx = ops.knn(xyz, query, 4)
    dist.sum().backward()  # distances stay differentiable
    assert xyz.grad is not None and torch.isfinite(xyz.grad).all() and xyz.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(ops.knn(xyz, query, 4)[1], nn_idx)


AMD = "AMD EPYC (2 logical CPUs)"
XEON = "Intel(R) Xeon(R) Processor (2 logical CPUs)"


def bert_full_entry(monkeypatch, cpu, threads, train_s=1.0, eval_s=0.5):
    """A measured point_bert / full CPU entry at the reference's setup, as if run on ``cpu``."""
    monkeypatch.setattr(model_cases, "device_name", lambda device: cpu)
    spec = {"name": "point_bert / full", "backbone": "point_bert", "method": "full", "precision": "fp32",
            "batch": 32, "npoints": 1024, "device": "cpu", "variant": None, "warmup": 1, "steps": 1,
            "eval_warmup": 1, "eval_steps": 1, "family": "scan"}
    result = {"train_step_s": train_s, "eval_step_s": eval_s, "train_samples_per_s": 32 / train_s,
              "train_times": [train_s], "eval_times": [eval_s], "memory_method": "m", "threads": threads,
              "notes": []}
    return model_cases._entry(spec, "ok", "", result)


def cpu_report(entry, cpu, threads):
    rep = {"device": "cpu", "device_name": cpu, "threads": threads, "parts": ["models"], "ops": [], "tooling": [],
           "models": [entry], "date": "2026-12-01", "quick": False, "torch": "2.13.0", "python": "3.11"}
    rep["targets"] = bench_report.build_targets(rep)
    return rep


def ratio_cell(md, backbone="point_bert", method="full"):
    """The "ours vs official" cell of a models row of the rendered report."""
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| backbone "))
    col = [c.strip() for c in header.split("|")].index("ours vs official train / eval")
    row = next(line for line in lines if re.match(rf"\| {backbone} +\| {method} +\|", line))
    return [c.strip() for c in row.split("|")][col]


def test_speed_targets_compare_with_the_official_reference_as_at_least(monkeypatch):
    ref = model_cases.official_reference()
    assert ref[("point_bert", "full")]["train_step_s"] > 0 and ref[("point_bert", "full")]["batch"] == 32
    assert ref[("point_bert", "full")]["cpu"] == AMD
    rows = []
    for train_s, eval_s in ((1.0, 0.5), (2.0, 0.5)):
        e = bert_full_entry(monkeypatch, AMD, 2, train_s, eval_s)
        rows.append(e)
        rep = cpu_report(e, AMD, 2)
        targets = {t["name"]: t for t in rep["targets"]}
        train = targets["speed_vs_official[point_bert/full/train]"]
        official = ref[("point_bert", "full")]["train_step_s"]
        assert train["comparison"] == ">=" and train["value"] == pytest.approx(official / train_s)
        assert train["status"] == ("pass" if official / train_s >= 1.5 else "fail")
        assert AMD in train["notes"]
        assert ratio_cell(bench_report.render_markdown(rep)) == f"{official / train_s:.2f}x / {ref[('point_bert', 'full')]['eval_step_s'] / eval_s:.2f}x"
    assert rows[0]["official_cpu"]["eval_speedup"] == pytest.approx(ref[("point_bert", "full")]["eval_step_s"] / 0.5)


ZEN5 = "AMD EPYC (family 26 model 2, AVX-512, 2 logical CPUs)"


def cpuinfo(family: str, model: str, flags: str) -> str:
    """/proc/cpuinfo of a 2-CPU VM that hides the generation in its model name."""
    block = (f"processor\t: {{n}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: AMD EPYC\nflags\t\t: fpu sse sse2 {flags}\n\n")
    return block.format(n=0) + block.format(n=1)


def test_the_cpu_name_tells_generations_that_share_a_model_name():
    zen5 = cpu_name(cpuinfo("26", "2", "avx avx2 avx512f avx512_bf16"), logical_cpus=2)
    zen2 = cpu_name(cpuinfo("23", "49", "avx avx2"), logical_cpus=2)
    assert zen5 == ZEN5
    assert zen2 == "AMD EPYC (family 23 model 49, AVX2, 2 logical CPUs)"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n\n"
    assert cpu_name(arm, logical_cpus=4).endswith("(NEON, 4 logical CPUs)")
    assert cpu_name("", logical_cpus=2).endswith("(2 logical CPUs)")  # no /proc/cpuinfo: what platform says
    assert not cpu_name("model name\t: \n", logical_cpus=2).startswith(" ")  # an empty name: platform's
    assert model_cases.device_name("cpu") == cpu_name()  # what reports and the official comparison use


@pytest.mark.parametrize("cpu, threads, why", [
    (XEON, 2, "this run on Intel(R) Xeon(R) Processor"),
    # the reference's name does not record the generation: an "AMD EPYC" that names its own
    # (every report since the name has it) is another CPU as far as a time ratio can tell
    (cpu_name(cpuinfo("26", "2", "avx2 avx512f"), logical_cpus=2), 2,
     "they were measured on AMD EPYC (2 logical CPUs), this run on " + ZEN5),
    (AMD, 1, "they used 2 threads, this run 1"),
])
def test_speed_targets_refuse_a_ratio_across_cpu_models_or_thread_counts(monkeypatch, cpu, threads, why):
    # the official figures' CPU and threads are in the reference file: a run elsewhere shows the
    # figures, computes no ratio, and its speed targets are not-measured with the reason
    ref = model_cases.official_reference()[("point_bert", "full")]
    e = bert_full_entry(monkeypatch, cpu, threads, 0.1, 0.1)
    assert "train_speedup" not in e["official_cpu"] and why in e["official_cpu"]["not_comparable"]
    rep = cpu_report(e, cpu, threads)
    targets = {t["name"]: t for t in rep["targets"]}
    for phase in ("train", "eval"):
        t = targets[f"speed_vs_official[point_bert/full/{phase}]"]
        assert t["status"] == "not-measured" and t["value"] is None and why in t["notes"]
    md = bench_report.render_markdown(rep)
    assert ratio_cell(md) == "-"
    row = next(line for line in md.splitlines() if re.match(r"\| point_bert +\| full +\|", line))
    assert f"{ref['train_step_s']:.2f} / {ref['eval_step_s']:.2f}" in row   # the figures are still shown
    assert md.count("not comparable") == 2  # the two targets' notes


def test_a_stored_ratio_is_judged_again_from_the_reports_own_machine(monkeypatch):
    # a report whose entry stored a ratio (an older bench, or a hand-edited device_name) is
    # scored from its own device_name and threads, not from the stored ratio
    e = bert_full_entry(monkeypatch, AMD, 2)
    assert "train_speedup" in e["official_cpu"]
    for cpu, threads in ((XEON, 2), (AMD, 4)):
        rep = cpu_report({**e, "threads": threads}, cpu, threads)
        t = next(t for t in rep["targets"] if t["name"] == "speed_vs_official[point_bert/full/train]")
        assert t["status"] == "not-measured" and "not comparable" in t["notes"]
        assert ratio_cell(bench_report.render_markdown(rep)) == "-"


@pytest.mark.parametrize("text, error", [
    ("backbone,method,points,batch,threads,trainable_params,train_step_s,eval_step_s,peak_rss_increase_bytes,measured,how\n"
     "point_bert,full,1024,32,2,1,2.5,0.8,1,2026-11-25,x\n", r"official\.csv: missing column\(s\) cpu; expected"),
    ("backbone,method,points,batch,threads,trainable_params,train_step_s,eval_step_s,peak_rss_increase_bytes,cpu,measured,how\n"
     "point_bert,full,1024,32,2,1,fast,0.8,1,AMD EPYC,2026-11-25,x\n", r"official\.csv, line 2: .*fast.*expected numbers"),
])
def test_a_damaged_official_reference_is_one_line_before_any_case_runs(monkeypatch, tmp_path, text, error):
    from harness.bench.common import BenchSetupError
    from harness.cli import UserError

    report = tmp_path / "r.json"   # a sound report, written before the reference file is damaged
    report.write_text(json.dumps({**cpu_report(bert_full_entry(monkeypatch, AMD, 2), AMD, 2),
                                  "schema": bench_report.SCHEMA_VERSION, "created": "2026-12-01T00:00:00+00:00",
                                  "git_commit": "abc1234", "load_average": [0.1] * 3, "command": "x",
                                  "model_batch": 32, "epoch": [], "scaling": [], "wall_s": 1.0}))
    csv_path = tmp_path / "official.csv"
    csv_path.write_text(text)
    monkeypatch.setattr(model_cases, "OFFICIAL_CPU_CSV", csv_path)
    with pytest.raises(BenchSetupError, match=error):
        model_cases.official_reference()
    monkeypatch.setattr(model_cases, "run_specs", lambda *a, **k: pytest.fail("a case ran before the check"))
    with pytest.raises(UserError, match=error) as err:
        run_cli(["bench", "--device", "cpu", "--only", "models", "--out", str(tmp_path / "out"), "--no-readme"])
    assert "\n" not in str(err.value)
    # --merge re-scores with the reference file: the same one line
    with pytest.raises(UserError, match="^--merge: .*" + error):
        run_cli(["bench", "--merge", str(report), "--out", str(tmp_path / "m"), "--no-readme"])


def tiny_epoch_specs(device, samples, root, backbones=None, threads=None, warmup=1, precisions=None, compiles=None):
    """Two epoch cases (full, Point-PEFT) of a tiny Point-MAE at batch 4 on the CPU."""
    base = {"kind": "epoch", "backbone": "point_mae", "precision": "fp32", "compile": False, "device": device,
            "samples": samples, "root": root, "batch": 4, "npoints": 1024, "warmup": warmup, "workers": 0,
            "threads": 1, "seed": 0, "backbone_options": TINY_MAE}
    return [{**base, "method": "full", "method_options": {}},
            {**base, "method": "point_peft", "method_options": TINY_PEFT}]


def test_epoch_part_runs_a_real_loader_epoch_on_the_cpu(monkeypatch, tmp_path):
    from harness.bench import epoch_cases

    monkeypatch.setattr(epoch_cases, "BATCH", 4)
    monkeypatch.setattr(epoch_cases, "epoch_specs", tiny_epoch_specs)
    rep = run_bench("cpu", quick=True, only=["epoch"], log=lambda m: None, epoch_samples=10)
    assert [e["status"] for e in rep["epoch"]] == ["ok", "ok"], [e["notes"] for e in rep["epoch"]]
    for e in rep["epoch"]:
        assert e["values"]["samples"] == 8 and e["values"]["steps"] == 2  # drop_last: 10 -> 2 batches of 4
        assert e["value"] > 0 and e["values"]["peak_memory_bytes"] >= 0
    gpu = [t for t in rep["targets"] if t["name"].startswith("epoch_")]
    assert len(gpu) == 3 and all(t["status"] == "not-measured" and "GPU" in t["notes"] for t in gpu)
    paths = write_outputs(rep, tmp_path, None)
    assert paths["json"].name.endswith("-epoch-quick.json") and "### Epoch" in paths["markdown"].read_text()
    with pytest.raises(epoch_cases.BenchSetupError, match="at least one batch"):
        epoch_cases.run_epochs("cpu", samples=3)


def test_scaling_fits_growth_exponents_and_plots(tmp_path):
    from harness.bench import scaling

    assert scaling.fit_exponent([1, 2, 4, 8], [3.0, 12.0, 48.0, 192.0]) == pytest.approx(2.0)
    assert scaling.fit_exponent([8], [1.0]) is None
    entries = []
    for method, k in (("full", 1.0), ("point_peft", 0.5)):
        for axis, xs in (("points", (1024, 2048, 4096)), ("batch", (8, 16, 32))):
            for x in xs:
                entries.append({"status": "ok", "backbone": "point_mae", "method": method, "axis": axis,
                                "npoints": x if axis == "points" else 2048, "batch": x if axis == "batch" else 8,
                                "values": {"train_step_s": 0.01 * x ** k, "peak_train_memory_bytes": 1e6 * x}})
    entries.append({"status": "error", "backbone": "point_mae", "method": "full", "axis": "batch", "npoints": 2048,
                    "batch": 64, "values": {}, "name": "oom", "notes": "error: out of memory"})
    rows = {(r["method"], r["axis"]): r for r in scaling.series(entries)}
    assert rows[("point_peft", "points")]["train_step_s_exponent"] == pytest.approx(0.5)
    assert rows[("full", "batch")]["x"] == [8, 16, 32]  # the failed batch 64 is left out of the fit
    assert rows[("full", "batch")]["peak_train_memory_bytes_exponent"] == pytest.approx(1.0)
    png = tmp_path / "s.png"
    scaling.plot(entries, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    quick = scaling.scaling_specs("cpu", quick=True)
    assert {s["backbone"] for s in quick} == {"point_mae"} and len(quick) == 2 * (2 + 2)
    full = scaling.scaling_specs("cpu", quick=False)
    assert sorted({s["npoints"] for s in full if s["axis"] == "points"}) == [1024, 2048, 4096, 8192]
    assert sorted({s["batch"] for s in full if s["axis"] == "batch"}) == [8, 16, 32, 64]


def test_point_peft_cases_measure_each_memory_lever_switched_and_the_table_compares_them():
    specs = model_cases.model_specs("cpu", quick=True, backbones=["point_mae"], methods=["full", "point_peft"])
    peft = [s for s in specs if s["method"] == "point_peft"]
    assert [s["variant"] for s in peft] == [None] + [name for name, *_ in model_cases.LEVERS]
    assert all(s["variant"] is None for s in specs if s["method"] == "full")
    for spec, (name, backbone_options, method_options, _) in zip(peft[1:], model_cases.LEVERS):
        assert spec["backbone_options"] == backbone_options and spec["method_options"] == method_options
    entries = []
    for spec, (train_s, mem) in zip(peft, ((2.0, 100 * 2**20), (1.6, 300 * 2**20), (1.9, 150 * 2**20))):
        result = {"train_step_s": train_s, "eval_step_s": 1.0, "train_samples_per_s": 4 / train_s,
                  "eval_samples_per_s": 4.0, "peak_train_memory_bytes": mem, "train_times": [train_s],
                  "eval_times": [1.0], "memory_method": "m", "threads": 1, "notes": []}
        entries.append(model_cases._entry(spec, "ok", "", result))
    rows = bench_report.lever_rows(entries)
    assert [r[2] for r in rows] == [name for name, *_ in model_cases.LEVERS]
    assert rows[0][3] == "2.000 / 1.600 s (1.25x)" and "(0.33x)" in rows[0][4]
    assert rows[1][3] == "2.000 / 1.900 s (1.05x)" and "(0.67x)" in rows[1][4]


def test_full_cpu_runs_measure_the_huge_page_default_switched_off_in_the_measuring_process(monkeypatch):
    full = model_cases.model_specs("cpu", quick=False, backbones=["point_bert"], methods=["full", "point_peft"])
    off = [s for s in full if s["variant"] == "huge pages off"]
    assert [s["method"] for s in off] == ["full", "point_peft"]
    assert all(s["env"] == {"THP_MEM_ALLOC_ENABLE": "0"} for s in off)
    assert all(s["env"] == {} for s in full if s["variant"] != "huge pages off")
    for device, quick in (("cpu", True), ("cuda", False)):  # a smoke run, and a GPU's allocator
        assert not [s for s in model_cases.model_specs(device, quick=quick) if s["variant"] == "huge pages off"]
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")   # a run that is the lever already: 0 vs 0 would say nothing
    assert not [s for s in model_cases.model_specs("cpu", quick=False, backbones=["point_bert"],
                                                   methods=["full"]) if s["variant"] == "huge pages off"]
    seen = []

    def fake_run(cmd, env, **kwargs):
        seen.append(env.get("THP_MEM_ALLOC_ENABLE"))
        raise subprocess.TimeoutExpired(cmd, 1)
    monkeypatch.setattr(model_cases.subprocess, "run", fake_run)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    entries = model_cases.run_specs([s for s in full if s["method"] == "full"], log=lambda *_: None)
    assert seen == ["1", "0"] and [e["variant"] for e in entries] == [None, "huge pages off"]
    rows = bench_report.lever_rows([model_cases._entry(s, "ok", "", {
        "train_step_s": t, "eval_step_s": 1.0, "train_samples_per_s": 32 / t, "eval_samples_per_s": 32.0,
        "peak_train_memory_bytes": 2**30, "train_times": [t], "eval_times": [1.0], "memory_method": "m",
        "threads": 2, "notes": []}) for s, t in zip([s for s in full if s["method"] == "full"], (3.0, 4.0))])
    assert rows[0][2] == "huge pages off" and rows[0][3] == "3.000 / 4.000 s (0.75x)" and "THP_MEM_ALLOC_ENABLE" in rows[0][6]


def test_op_counter_counts_working_ops_not_views_or_allocations():
    from harness.bench.common import OpCounter
    x, w = torch.randn(4, 5, requires_grad=True), torch.randn(5, 3)
    with OpCounter() as views:
        x.view(20).t()
        x.reshape(2, 10).unsqueeze(0).expand(3, 2, 10)
        torch.empty(10)
        x.detach().unsqueeze_(0)
    assert views.ops == 0
    with OpCounter() as forward:
        (x @ w).relu().sum()                            # mm, relu, sum
    assert forward.ops == 3
    with OpCounter() as both:
        (x @ w).relu().sum().backward()                 # + backward's seed, relu and mm backward
    assert both.ops > forward.ops + 2 and x.grad is not None
    y = torch.zeros(3)
    with OpCounter() as inplace:
        y.add_(1).mul_(2)                               # in-place ops do work too
    assert inplace.ops == 2
    with OpCounter() as marked:
        with torch.profiler.record_function("a marker"):   # profiler markers launch nothing
            y.add(1)
    assert marked.ops == 1
    with OpCounter() as nested:
        with OpCounter() as inner:
            x.add(1)
        x.mul(2)
    assert (inner.ops, nested.ops) == (1, 2)


def test_tensor_peak_bytes_counts_live_tensors_over_the_call():
    from harness.bench.common import tensor_peak_bytes

    def step():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # + 2 MiB live together: the peak
        del a
        c = torch.empty(1 << 18)  # 2 + 1 MiB: below the peak
        return b, c

    assert tensor_peak_bytes(step) == 4 * ((1 << 20) + (1 << 19))
    assert tensor_peak_bytes(lambda: None) is None  # nothing allocated: no events


def test_models_case_loads_the_fps_kernel_before_its_memory_baseline(monkeypatch):
    """numba's first FPS call maps ~105 MiB of code: a one-off cost of the process, as torch's
    import is, so it is kept out of the training RSS increase of every method alike."""
    from harness.bench import common, model_cases
    from models import ops
    order, fps, start = [], ops.fps, common.PeakRSS.start
    monkeypatch.setattr(ops, "fps", lambda *a, **k: order.append("fps") or fps(*a, **k))
    monkeypatch.setattr(common.PeakRSS, "start", lambda self: order.append("rss") or start(self))
    [spec] = [s for s in model_cases.model_specs("cpu", quick=True, backbones=["point_bert"], methods=["full"])]
    result = model_cases.measure_one({**spec, "batch": 2, "steps": 1, "eval_steps": 1})
    assert order[0] == "fps" and "rss" in order and order.index("rss") == 1   # loaded, then the baseline
    assert order.count("fps") > 2                                              # then the model's own calls
    assert "the FPS kernel loaded before it" in result["memory_method"]
