"""The bench report: targets, JSON checks, markdown tables, README block, output files."""
from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from harness.bench.common import ENTRY_STATUSES, EXTRA_PARTS, PARTS, SCHEMA_VERSION, STATUSES
from harness.bench.epoch_cases import epoch_targets, fast_gpu
from harness.results import MarkersMissing, inject_readme  # noqa: F401 - MarkersMissing re-exported

PEFT_MEMORY_RATIO = 0.5
FPS_RATIO = 2.0
KNN_RATIO = 2.0
MATRIX_SECONDS = 3.0
STATUS_SECONDS = 3.0
TABLES_SECONDS = 5.0
OFFICIAL_SPEEDUP = 1.5  # ours at least 1.5x the official step rate (CPU, batch 32)
CUDA_EPOCH_SECONDS = 5.0  # Point-PEFT bf16 epoch of PB_T50_RS on an H100 / H200


def readme_markers(device: str) -> tuple[str, str]:
    return f"<!-- bench:{device}:start -->", f"<!-- bench:{device}:end -->"


# ------------------------------------------------------------------ targets

def _target(name: str, description: str, value, threshold, unit: str, notes: str = "",
            measured: bool = True, comparison: str = "<=") -> dict:
    if not measured or value is None:
        status = "not-measured"
    else:
        status = "pass" if (value <= threshold if comparison == "<=" else value >= threshold) else "fail"
    return {"name": name, "description": description, "value": value, "threshold": threshold,
            "comparison": comparison, "unit": unit, "status": status, "notes": notes}


def _ok(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("status") == "ok" and e.get("value") is not None]


def official_row(refs: dict, entry: dict) -> dict | None:
    """The official reference row of ``entry``'s setup (``model_cases.official_applies``), or None."""
    from harness.bench.model_cases import official_applies

    ref = refs.get((entry.get("backbone"), entry.get("method")))
    return ref if ref is not None and official_applies(ref, entry) else None


def official_comparison(report: dict, entry: dict | None, refs: dict) -> dict | None:
    """The official reference row's comparison with ``entry`` (a models entry of ``report``):
    ``model_cases.compare_official`` against the report's own CPU name and the entry's threads;
    None when no reference row is of the entry's setup (or it has no times)."""
    from harness.bench.model_cases import compare_official

    if entry is None or entry.get("status") != "ok" or report.get("device") != "cpu":
        return None
    ref = official_row(refs, entry)
    if ref is None:
        return None
    compared = compare_official(ref, entry.get("values", {}), report.get("device_name"),
                                entry.get("threads", report.get("threads")))
    return compared or None


def build_targets(report: dict) -> list[dict]:
    """Each target with its measured value, threshold and pass / fail / not-measured."""
    device, parts = report["device"], set(report.get("parts", PARTS))
    targets = []

    # Point-PEFT peak training memory <= 0.5x full fine-tuning, per backbone. On the CPU twice:
    # peak RSS (what the process holds, glibc's kept heap included) and peak live tensor bytes
    # (what the model needs; the measure a GPU reports), each scored.
    models = _ok(report["models"])
    backbones = list(dict.fromkeys(e["backbone"] for e in report["models"] if "backbone" in e))
    kinds = [("peft_memory", "peak_train_memory_bytes", "peak RSS increase" if device == "cpu" else
              "peak allocated increase", "peak training memory")]
    if device == "cpu":
        kinds.append(("peft_tensor_memory", "peak_train_tensor_bytes", "peak live tensor bytes",
                      "peak training tensor memory"))
    for backbone in backbones or ["(any backbone)"]:
        full = next((e for e in models if e["backbone"] == backbone and e["method"] == "full"
                     and e["precision"] == "fp32" and not e.get("variant")), None)
        peft = next((e for e in models if e["backbone"] == backbone and e["method"] == "point_peft"
                     and e["precision"] == "fp32" and not e.get("variant")), None)
        for name, key, what, title in kinds:
            value, notes = None, "models part not run" if "models" not in parts else ""
            a, b = ((peft["values"].get(key), full["values"].get(key)) if full and peft else (None, None))
            if a is not None and b is not None:
                value = a / b if b > 0 else None
                notes = (f"Point-PEFT {a / 2**20:,.0f} MiB vs full {b / 2**20:,.0f} MiB {what} over "
                         f"training steps, batch {peft['batch']}, {device}")
            elif full and peft:
                notes = f"{what} not recorded for both cases"
            elif "models" in parts:
                notes = "needs both full and point_peft measured (method not registered or a case failed)"
            targets.append(_target(f"{name}[{backbone}]", f"{backbone}: Point-PEFT {title} / full fine-tuning",
                                   value, PEFT_MEMORY_RATIO, "x", notes))

    # our FPS within 2x of fpsample; our kNN within 2x of torch_cluster (CPU)
    ops_ok = _ok(report["ops"])
    cases = list(dict.fromkeys(e["case"] for e in report["ops"] if "case" in e))
    for prefix, lib, threshold in (("fps", "fpsample", FPS_RATIO), ("knn", "torch_cluster", KNN_RATIO)):
        mine = [c for c in cases if c.startswith(prefix)] or [f"{prefix}_*"]
        for case in mine:
            ours = next((e for e in ops_ok if e["case"] == case and e["impl"] == "ours"), None)
            theirs = [e for e in ops_ok if e["case"] == case and e["impl"].startswith(lib)]
            value, notes = None, ""
            if device != "cpu":
                notes = "a CPU target: run with --device cpu"
            elif "ops" not in parts:
                notes = "ops part not run"
            elif not theirs:
                notes = f"{lib} not installed (or failed): see the ops table"
            elif ours:
                best = min(theirs, key=lambda e: e["value"])
                value = ours["value"] / best["value"]
                notes = f"ours {ours['value']:.4f} s vs {best['impl']} {best['value']:.4f} s (its fastest exact)"
            targets.append(_target(f"{case}_vs_{lib}", f"{case}: our time / {lib}'s (CPU)",
                                   value, threshold, "x", notes))

    # tooling
    for key, name, desc, threshold in (
            ("matrix", "matrix_1000_expand_dry_run", "expand + dry-run submit of a 1,000-run matrix",
             MATRIX_SECONDS),
            ("status", "status_1000_slurm_runs", "status of 1,000 SLURM runs", STATUS_SECONDS),
            ("tables", "tables_from_100000_records", "tables from 100,000 records (first run)", TABLES_SECONDS),
            ("tables_again", "tables_from_100000_records_again",
             "tables from 100,000 records again (unchanged ones from the row cache)", TABLES_SECONDS)):
        entry = next((e for e in report["tooling"] if e.get("id") == key.removesuffix("_again")), None)
        value = entry["value"] if entry and entry.get("status") == "ok" else None
        if key == "tables_again" and value is not None:
            value = entry.get("values", {}).get("again_s")
        notes = "tooling part not run" if "tooling" not in parts else (
            entry["notes"] if entry and value is None else "")
        records = (entry or {}).get("values", {}).get("records")
        from harness.bench.tooling_cases import TABLE_RECORDS
        if key.startswith("tables") and value is not None and records != TABLE_RECORDS:
            value, notes = None, f"measured on {records:,} records (a --quick run), not {TABLE_RECORDS:,}"
        targets.append(_target(name, desc, value, threshold, "s", notes))

    # ours vs the official code's CPU step rate (reference figures, batch 32, fp32), judged from
    # this report's own machine and threads (a stored ratio of an older report is not trusted)
    from harness.bench.model_cases import official_reference

    refs = official_reference()
    for (backbone, method), ref in refs.items():
        if backbones and backbone not in backbones:
            continue
        entry = next((e for e in models if e["backbone"] == backbone and e["method"] == method
                      and not e.get("variant") and e["precision"] == "fp32"), None)
        compared = official_comparison(report, entry, refs)
        for phase in ("train", "eval"):
            value, notes = None, ""
            if device != "cpu":
                notes = "a CPU target: run with --device cpu"
            elif "models" not in parts:
                notes = "models part not run"
            elif entry is None or compared is None:
                notes = (f"needs {backbone} / {method} measured at batch {ref['batch']}, {ref['points']} points "
                         "(not in a --quick run)")
            elif "not_comparable" in compared:
                notes = f"official {ref[f'{phase}_step_s']:.2f} s; {compared['not_comparable']}"
            else:
                value = compared[f"{phase}_speedup"]
                notes = (f"official {ref[f'{phase}_step_s']:.2f} s vs ours {entry['values'][f'{phase}_step_s']:.2f} s "
                         f"per {'train step' if phase == 'train' else 'eval forward'}; {ref['source']}")
            targets.append(_target(f"speed_vs_official[{backbone}/{method}/{phase}]",
                                   f"{backbone} / {method}: official s per {phase} step / ours (CPU, batch 32)",
                                   value, OFFICIAL_SPEEDUP, "x", notes, comparison=">="))

    # GPU epoch (epoch part): Point-PEFT <= full, <= 5 s on H100/H200 in bf16, memory <= 0.5x full
    if "epoch" in parts:
        for backbone, kind, value, notes in epoch_targets(report):
            if kind == "peft_le_full":
                targets.append(_target(f"epoch_peft_vs_full[{backbone}]",
                                       f"{backbone}: Point-PEFT epoch / full fine-tuning epoch (CUDA, bf16)",
                                       value, 1.0, "x", notes))
            elif kind == "peft_seconds":
                if value is not None and not fast_gpu(report.get("device_name", "")):
                    value, notes = None, f"the 5 s target is for an H100 / H200, this is {report['device_name']}"
                targets.append(_target(f"epoch_peft_seconds[{backbone}]",
                                       f"{backbone}: Point-PEFT epoch of PB_T50_RS (11,416), bf16, H100/H200",
                                       value, CUDA_EPOCH_SECONDS, "s", notes))
            else:
                targets.append(_target(f"epoch_peft_memory[{backbone}]",
                                       f"{backbone}: Point-PEFT epoch peak memory / full (CUDA, bf16)",
                                       value, PEFT_MEMORY_RATIO, "x", notes))
    return targets


# ------------------------------------------------------------------ merging

# Fields that must agree for reports to be merged into one: the same machine, software and mode.
MERGE_SAME = ("schema", "device", "device_name", "torch", "python", "threads", "quick", "git_commit", "allocator_env")


def model_batch(models: list[dict]):
    """The models part's batch: one int, a sorted list when cases differ, None without cases."""
    batches = sorted({e["batch"] for e in models if "batch" in e})
    return batches[0] if len(batches) == 1 else (batches or None)


def merge_reports(reports: list[dict], sources: list[str]) -> dict:
    """One report from several ``bench`` runs of the same code on the same machine.

    For parts measured in separate calls (per backbone, per precision, a part rerun after a
    failure). ``sources`` names each report (for errors and the merged report's ``merged_from``).
    Entries are concatenated part by part and the targets rebuilt from them. Raises ValueError
    (naming the source and field) if a report is malformed, if the reports differ in any of
    ``MERGE_SAME``, or if one case (part + name) appears twice: one setup per cell.
    """
    if not reports:
        raise ValueError("nothing to merge")
    if len(sources) != len(reports):
        raise ValueError(f"{len(reports)} reports but {len(sources)} source names")
    for rep, src in zip(reports, sources):
        problems = validate_report(rep)
        if problems:
            raise ValueError(f"{src}: not a bench report ({problems[0]})")
    first, first_src = reports[0], sources[0]
    for rep, src in zip(reports[1:], sources[1:]):
        for key in MERGE_SAME:
            if rep.get(key) != first.get(key):
                raise ValueError(f"{src}: {key} is {rep.get(key)!r} but {first_src} has {first.get(key)!r}; "
                                 "only runs of the same code on the same machine and mode can be merged")
    merged = dict(first)
    seen: dict[tuple[str, str], str] = {}
    for part in PARTS:
        merged[part] = []
        for rep, src in zip(reports, sources):
            for e in rep.get(part) or []:
                key = (part, e["name"])
                if key in seen:
                    raise ValueError(f"{src}: {part} case {e['name']!r} is also in {seen[key]}; merge each "
                                     "case from one run only")
                seen[key] = src
                merged[part].append(e)
    merged["parts"] = [p for p in PARTS if any(p in rep.get("parts", ()) for rep in reports)]
    merged["date"] = max(rep["date"] for rep in reports)
    merged["created"] = max(rep.get("created") or "" for rep in reports) or None
    commands = [rep.get("command") or "python run_all.py bench" for rep in reports]
    merged["command"] = " ; ".join(dict.fromkeys(commands))
    merged["wall_s"] = sum(rep.get("wall_s") or 0.0 for rep in reports)
    merged["merged_from"] = list(sources)
    merged.pop("partial", None)
    if any(rep.get("partial") for rep in reports):
        merged["partial"] = True
    merged["model_batch"] = model_batch(merged["models"])
    merged.pop("scaling_plot", None)
    merged["targets"] = build_targets(merged)
    return merged


# ------------------------------------------------------------------ validation

# Keys a report may have (older reports lack some), and the types they must have if present.
OPTIONAL_KEYS = (("epoch", list, "a list"), ("scaling", list, "a list"), ("parts", list, "a list"),
                 ("wall_s", (int, float), "a number"), ("created", (str, type(None)), "a string or null"),
                 ("command", (str, type(None)), "a string or null"),
                 ("git_commit", (str, type(None)), "a string or null"),
                 ("load_average", (list, type(None)), "a list or null"),
                 ("model_batch", (int, list, type(None)), "an integer, a list or null"),
                 ("merged_from", list, "a list"),
                 ("allocator_env", dict, "an object"))
# Measured values the targets and tables compute with: numbers (or null) where present.
NUMERIC_VALUES = ("peak_train_memory_bytes", "peak_train_tensor_bytes", "peak_memory_bytes", "peak_increase_bytes",
                  "samples",
                  "train_step_s", "eval_step_s", "again_s", "records", "epoch_s", "train_ops")
CASE_PARTS = ("models", "epoch", "scaling")   # entries that name a backbone / method / precision

TOP_KEYS = {"schema": int, "device": str, "device_name": str, "date": str, "torch": str, "python": str,
            "threads": int, "quick": bool, "ops": list, "models": list, "tooling": list, "targets": list}


def validate_report(report) -> list[str]:
    """Problems with a report's shape (empty list = valid)."""
    problems = []
    if not isinstance(report, dict):
        return [f"report must be an object, got {type(report).__name__}"]
    for key, kind in TOP_KEYS.items():
        if key not in report:
            problems.append(f"missing top-level key {key!r}")
        elif not isinstance(report[key], kind) or (kind is int and isinstance(report[key], bool)):
            problems.append(f"{key!r} must be {kind.__name__}, got {type(report[key]).__name__}")
    if report.get("schema") != SCHEMA_VERSION:
        problems.append(f"schema must be {SCHEMA_VERSION}")
    for key, kinds, what in OPTIONAL_KEYS:
        if key in report and not (isinstance(report[key], kinds) and not isinstance(report[key], bool)):
            problems.append(f"{key!r} must be {what}, got {type(report[key]).__name__}")
    parts = report.get("parts")
    if isinstance(parts, list) and not all(p in PARTS for p in parts):
        problems.append(f"'parts' must name parts of {', '.join(PARTS)}")
    load = report.get("load_average")
    if isinstance(load, list) and not all(isinstance(x, (int, float)) for x in load):
        problems.append("'load_average' must hold numbers")
    alloc = report.get("allocator_env")
    if isinstance(alloc, dict) and not all(isinstance(k, str) and isinstance(v, str) for k, v in alloc.items()):
        problems.append("'allocator_env' must map names to strings")
    for part in PARTS:
        entries = report.get(part) or []
        if not isinstance(entries, list):
            continue   # reported above (TOP_KEYS / OPTIONAL_KEYS)
        for i, e in enumerate(entries):
            where = f"{part}[{i}]"
            if not isinstance(e, dict):
                problems.append(f"{where} must be an object")
                continue
            for key in ("name", "unit", "notes", "status"):
                if not isinstance(e.get(key), str):
                    problems.append(f"{where}.{key} must be a string")
            if "value" not in e and "values" not in e:
                problems.append(f"{where} has neither value nor values")
            if e.get("status") not in ENTRY_STATUSES:
                problems.append(f"{where}.status {e.get('status')!r} not in {ENTRY_STATUSES}")
            if e.get("status") == "ok" and not isinstance(e.get("value"), (int, float)):
                problems.append(f"{where}: an ok entry needs a numeric value")
            values = e.get("values", {})
            if not isinstance(values, dict):
                problems.append(f"{where}.values must be an object")
            elif not all(v is None or isinstance(v, (int, float, str, list, dict)) for v in values.values()):
                problems.append(f"{where}.values must hold numbers, strings, lists or objects")
            elif any(k in values and values[k] is not None and not isinstance(values[k], (int, float))
                     for k in NUMERIC_VALUES):
                problems.append(f"{where}.values: {', '.join(NUMERIC_VALUES)} must be numbers")
            if part in CASE_PARTS and e.get("status") == "ok":
                for key in ("backbone", "method", "precision"):
                    if key in e and not isinstance(e[key], str):
                        problems.append(f"{where}.{key} must be a string")
                if "batch" in e and (not isinstance(e["batch"], int) or isinstance(e["batch"], bool)):
                    problems.append(f"{where}.batch must be an integer")
            if part == "ops" and "case" in e and not isinstance(e["case"], str):
                problems.append(f"{where}.case must be a string")
    for i, t in enumerate(report.get("targets") or []):
        where = f"targets[{i}]"
        if not isinstance(t, dict):
            problems.append(f"{where} must be an object")
            continue
        for key in ("name", "value", "threshold", "unit", "status", "notes"):
            if key not in t:
                problems.append(f"{where} lacks {key!r}")
        if t.get("status") not in STATUSES:
            problems.append(f"{where}.status {t.get('status')!r} not in {STATUSES}")
        if t.get("status") in ("pass", "fail") and not isinstance(t.get("value"), (int, float)):
            problems.append(f"{where}: a {t.get('status')} target needs a numeric value")
    return problems


# ------------------------------------------------------------------ markdown

def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _target_value(t: dict) -> str:
    """The measured value as the targets table prints it: 2 decimals for a ratio, 3 for seconds,
    more where that would round it onto its threshold (0.503 x, not 0.50 x, fails <= 0.5 x)."""
    value, threshold = t["value"], t["threshold"]
    if value is None:
        return "-"
    for digits in range(2 if t["unit"] == "x" else 3, 7):
        if value == threshold or round(value, digits) != round(threshold, digits):
            return f"{value:.{digits}f} {t['unit']}"
    return f"{value!r} {t['unit']}"   # closer still: every digit


def render_markdown(report: dict, level: int = 2, command: str | None = None) -> str:
    h = "#" * level
    mode = "quick" if report["quick"] else "full"
    batch = report.get("model_batch")
    load = report.get("load_average")
    lines = [
        f"{h} Bench: {report['device']}, {report['date']} ({mode} mode)",
        "",
        f"{report['device_name']}; torch {report['torch']}, Python {report['python']}, "
        f"{report['threads']} torch threads" + (f"; load average at start {load[0]:.2f}" if load else "")
        + (f"; git {report['git_commit']}" if report.get("git_commit") else "")
        + ("; allocator environment " + ", ".join(f"`{k}={v}`" for k, v in report["allocator_env"].items())
           if report.get("allocator_env") else "") + ".",
        f"Generated by `{command or report.get('command') or 'python run_all.py bench'}`; do not edit by hand.",
    ]
    if report.get("partial"):
        lines.append("Partial: the run" + ("s" if report.get("merged_from") else "") + " stopped before every case "
                     "was measured; these are the cases finished, scored as they stand.")
    if report.get("merged_from"):
        count = len(report["merged_from"])
        lines.append(f"Merged by `python run_all.py bench --merge` from {count} run{'s' if count != 1 else ''} of "
                     f"this code on this machine: {', '.join(Path(s).name for s in report['merged_from'])}.")
    if report["quick"]:
        lines.append("Quick mode: fewer repeats and a smaller model batch; a smoke test, not a measurement.")
    parts = [lines[0], "  \n".join(lines[2:])]

    rows = [[t["description"], _target_value(t), f"{t['comparison']} {t['threshold']} {t['unit']}",
             t["status"], t["notes"]] for t in report["targets"]]
    parts += [f"{h}# Targets", tabulate(rows, headers=["target", "measured", "threshold", "status", "notes"],
                                        tablefmt="github", disable_numparse=True)]

    if report["ops"]:
        reps = max((len(e.get("repeats") or []) for e in report["ops"]), default=0)
        rows = [[e["name"].split(" [")[0], e["impl"], _num(e["value"], ".4f"),
                 _num(e.get("ratio_ours_over_this"), ".2f"), e["status"], e["notes"]] for e in report["ops"]]
        parts += [f"{h}# Ops",
                  f"Median seconds of {reps} repeats after a warm-up; ours / this > 1 means ours is slower. "
                  "\"ours\" is models/ops.py without the CUDA extensions: on the CPU the numba-compiled FPS kernel "
                  "where numba is installed, on CUDA the Triton FPS kernel where Triton is installed (its "
                  "PyTorch paths are timed beside it).",
                  tabulate(rows, headers=["op", "implementation", "median (s)", "ours / this", "status", "notes"],
                           tablefmt="github", disable_numparse=True)]

    if report["models"]:
        from harness.bench.model_cases import official_reference

        refs = official_reference() if report["device"] == "cpu" else {}
        official = any(official_row(refs, e) for e in report["models"])
        rows = []
        for e in report["models"]:
            v = e.get("values", {})
            method = e.get("method", "") + (f" ({e['variant']})" if e.get("variant") else "")
            row = [e.get("backbone", e["name"]), method, e.get("precision", ""), e.get("npoints", ""),
                   _num(v.get("trainable_params") and v["trainable_params"] / 1e6, ".2f"),
                   _num(v.get("train_samples_per_s"), ".2f"), _num(v.get("train_step_s"), ".3f"),
                   _num(v.get("train_cpu_s"), ".2f"), _num(v.get("train_ops"), ",.0f"),
                   _num(v.get("eval_samples_per_s"), ".2f"), _num(v.get("eval_step_s"), ".3f"),
                   _mib(v.get("peak_train_memory_bytes")), _mib(v.get("peak_train_tensor_bytes")),
                   _mib(v.get("peak_eval_memory_bytes"))]
            if official:
                o = official_row(refs, e)
                c = official_comparison(report, e, refs) or {}
                row.append(f"{o['train_step_s']:.2f} / {o['eval_step_s']:.2f} / "
                           f"{o['peak_train_memory_bytes'] / 1e9:.1f} GB" if o else "-")
                row.append(f"{c['train_speedup']:.2f}x / {c['eval_speedup']:.2f}x" if "train_speedup" in c else "-")
            row.append(e["notes"] if e["status"] == "ok" else f"{e['status']}: {e['notes']}")
            rows.append(row)
        headers = ["backbone", "method", "precision", "points", "trainable (M)", "train (samples/s)",
                   "s / train step", "CPU s / train step", "ops / train step", "eval (samples/s)", "s / eval step", "peak train mem",
                   "peak train tensors", "peak eval tensors"]
        if official:
            headers += ["official s/step train / eval / peak (reference)", "ours vs official train / eval"]
        headers.append("notes")
        mem = next((e.get("memory_method") for e in report["models"] if e.get("memory_method")), "")
        parts += [f"{h}# Models",
                  f"Batch {batch}, random inputs, ScanObjectNN-family geometry, 15 classes. Train step = zero_grad + "
                  "forward + cross-entropy + backward + AdamW over the trainable parameters; eval = forward "
                  "in eval mode, no grad; median step time; CPU s = process CPU time per step, all threads "
                  "(warm-up included); ops = ATen ops of one more training step that do work (views and bare "
                  "allocations excluded; on a GPU each launches about one kernel); one fresh process per row. Memory: " + mem + "."
                  + (" Official figures: the reference file results/reference/official_cpu_speed.csv, measured "
                     "once on a 2-core machine (the official code is not shipped, so not re-measured); "
                     "ours vs official = official s / ours, computed only on the CPU they name (model name, "
                     "family / model, vector ISA, logical CPUs, as this report names its own) and their thread count." if official else ""),
                  tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)]
        levers = lever_rows(report["models"])
        if levers:
            parts += [f"{h}# Memory levers",
                      "Each lever's effect, from the rows above (same backbone, method, batch): the default "
                      "build vs the build with the lever switched. Always on (no cost, so no switch): frozen "
                      "linear layers save no input (autograd keeps only what the required gradients need); "
                      "the frozen patch encoder runs without autograd, in chunks of groups; the geometric "
                      "branch's group max keeps its argmax as uint8. \"huge pages off\" is a process-wide allocator "
                      "setting (the measuring process's environment), measured for full fine-tuning too.",
                      tabulate(levers, headers=["backbone", "method", "lever", "train step: default / variant",
                                                "peak train memory: default / variant",
                                                "peak train tensors: default / variant", "what"],
                               tablefmt="github", disable_numparse=True)]

        from harness.bench.published_cost import render as render_cost
        cost = render_cost(report["models"], level=len(h) + 1)
        if cost:
            parts.append(cost)

    if report.get("epoch"):
        rows = [[e["backbone"], e["method"], e["precision"], "on" if e["compile"] else "off",
                 _num(e["values"].get("samples"), "d"), _num(e["value"], ".2f"), _num(e["values"].get("epoch_cpu_s"), ".1f"),
                 _num(e["values"].get("samples_per_s"), ".1f"), _mib(e["values"].get("peak_memory_bytes")),
                 _mib(e["values"].get("peak_increase_bytes")),
                 e["notes"] if e["status"] == "ok" else f"{e['status']}: {e['notes']}"] for e in report["epoch"]]
        mem = next((e.get("memory_method") for e in report["epoch"] if e.get("memory_method")), "")
        parts += [f"{h}# Epoch",
                  "One real epoch: PB_T50_RS-format h5 file of synthetic clouds (2,048 points), shuffled loader, "
                  "batch 32, FPS + random subset, scale-and-translate, forward, backward, AdamW; warm-up steps "
                  "not counted. Memory: " + mem + ".",
                  tabulate(rows, headers=["backbone", "method", "precision", "compile", "samples", "s / epoch",
                                          "CPU s", "samples/s", "peak memory", "peak increase (CUDA)", "notes"],
                           tablefmt="github", disable_numparse=True)]

    if report.get("scaling"):
        from harness.bench.scaling import series
        rows = []
        for r in series(report["scaling"]):
            rows.append([r["backbone"], r["method"], r["axis"], r["fixed"], " / ".join(str(x) for x in r["x"]),
                         " / ".join(f"{y:.3f}" for y in r["train_step_s"]),
                         _num(r["train_step_s_exponent"], ".2f"),
                         " / ".join(f"{y / 2**20:,.0f}" for y in r["peak_train_memory_bytes"]),
                         _num(r["peak_train_memory_bytes_exponent"], ".2f")])
        failed = [e["name"] + ": " + e["notes"] for e in report["scaling"] if e.get("status") != "ok"]
        parts += [f"{h}# Scaling",
                  "Training step (as in the models part) as the input grows (fixed batch) and as the batch grows "
                  "(fixed points); exponent = least-squares slope of log y on log x (y ~ x^a)."
                  + (f" Plot: `{report['scaling_plot']}`." if report.get("scaling_plot") else ""),
                  tabulate(rows, headers=["backbone", "method", "axis", "fixed", "sizes", "s / train step",
                                          "time exponent", "peak train memory (MiB)", "memory exponent"],
                           tablefmt="github", disable_numparse=True)]
        if failed:
            parts.append("Not measured: " + "; ".join(failed))

    if report["tooling"]:
        rows = [[e["name"], _num(e["value"], ".3f"),
                 ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in e.get("values", {}).items()),
                 e["status"], e["notes"]] for e in report["tooling"]]
        parts += [f"{h}# Tooling",
                  tabulate(rows, headers=["task", "seconds", "details", "status", "notes"],
                           tablefmt="github", disable_numparse=True)]
    return "\n\n".join(parts) + "\n"


def _pair(a: dict, b: dict, key: str) -> str:
    """'A MiB / B MiB (A/Bx)' of one value in two entries, '-' when either lacks it."""
    if a.get(key) is None or b.get(key) is None:
        return "-"
    return f"{_mib(a[key])} / {_mib(b[key])} ({a[key] / max(b[key], 1):.2f}x)"


def lever_rows(models: list[dict]) -> list[list[str]]:
    """Lever variant vs default rows (same backbone, method, precision, batch) for the markdown."""
    from harness.bench.model_cases import ENV_LEVERS, LEVERS

    what = {name: text for name, _, _, text in LEVERS} | {name: text for name, _, _, text in ENV_LEVERS}
    rows = []
    for e in models:
        if not e.get("variant") or e.get("status") != "ok":
            continue
        base = next((d for d in models if d.get("status") == "ok" and not d.get("variant")
                     and all(d.get(k) == e.get(k) for k in ("backbone", "method", "precision", "batch"))), None)
        if base is None:
            continue
        a, b = base["values"], e["values"]
        rows.append([e["backbone"], e["method"], e["variant"],
                     f"{a['train_step_s']:.3f} / {b['train_step_s']:.3f} s ({a['train_step_s'] / b['train_step_s']:.2f}x)",
                     _pair(a, b, "peak_train_memory_bytes"), _pair(a, b, "peak_train_tensor_bytes"),
                     what.get(e["variant"], "")])
    return rows


# ------------------------------------------------------------------ README

def inject_block(readme: bytes, block: str, start: str, end: str, where: str = "README") -> bytes:
    """The bench block of a README: ``harness.results.inject_readme`` with the bench markers."""
    return inject_readme(readme, block, where, markers=(start, end))


def partial_path(out_dir: Path, report: dict) -> Path:
    """Where a run's partial report goes while it runs (removed when the run completes)."""
    return output_paths(out_dir, report)[0].with_suffix(".partial.json")


def output_paths(out_dir: Path, report: dict) -> tuple[Path, Path]:
    extra = "".join(f"-{p}" for p in EXTRA_PARTS if p in report.get("parts", ()))
    stem = f"{report['device']}-{report['date']}{extra}" + ("-quick" if report["quick"] else "")
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def to_json(report: dict) -> bytes:
    return (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()
