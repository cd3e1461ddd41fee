"""Bench part ``models``: training and eval throughput and peak memory per backbone x method.

Every registered backbone (``models.classifier.BACKBONES``) x registered method (``METHODS``,
the ``models.peft`` registry; combinations a method does not support are left out) is measured in a fresh Python process (``python -m harness.bench --one SPEC``), so the peak
memory of one case is not hidden by what an earlier case left allocated:

* training step = zero_grad + forward + cross-entropy + backward + AdamW step over the
  parameters that require grad (the official-speed note's definition); median over the timed
  steps after the warm-up; samples/s = batch / median step time;
* eval = forward in eval mode under no_grad; same statistics;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (absolute, and the increase over
  what was allocated before the steps; eval, then training); on the CPU training runs first,
  as in a training run: the peak resident-set increase over the training steps (VmHWM reset to
  VmRSS before them, read after), and the peak of live tensor bytes of one more training step
  and of one more eval forward (``common.tensor_peak_bytes``: what a GPU's peak counts).

Inputs are random: points uniform in [-1, 1]^3, 15 classes, the ScanObjectNN family's official
geometry (Point-MAE / Point-M2AE: 2048 points; Point-BERT: its official 1024-point preset).
PEFT models with a memory bank get a random L2-normalised bank of PB_T50_RS's size.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.bench.common import ROOT, BenchSetupError, device_name, short_error, time_calls

FAMILY = "scan"
NUM_CLASSES = 15
BANK_COLUMNS = 11416  # ScanObjectNN PB_T50_RS training samples = one column each
QUICK_CPU_BATCH = 4
RESULT_MARK = "BENCH_RESULT "

# The official implementations' CPU step times (2 threads, float32, batch 32, AdamW), measured
# once on a 2-core machine (the official code is not shipped, so the bench cannot re-measure it):
# one row per case, with its CPU model, when and how it was measured. A time ratio is a speed
# ratio of the code only on the same CPU model with the same threads: elsewhere it measures the
# machines, so the bench shows the figures but computes no ratio.
OFFICIAL_CPU_CSV = ROOT / "results" / "reference" / "official_cpu_speed.csv"
OFFICIAL_COLUMNS = ("backbone", "method", "points", "batch", "threads", "train_step_s", "eval_step_s",
                    "peak_rss_increase_bytes", "cpu", "measured", "how")
OFFICIAL_NOTE = "official figure measured on {cpu} with {threads} threads on {measured}, not re-measured here"

# Memory levers, each measured as the default build with that one lever switched the other way:
# (name, backbone_options, method_options, what it shows).
LEVERS = (
    ("recompute off", {"recompute": "off"}, {},
     "backbone recompute 'frozen' (default) vs 'off': frozen pre-norm attention / MLP sub-layers "
     "(with their LayerNorm) recomputed in backward instead of keeping q/k/v/out and the GELU input"),
    ("geo_recompute off", {}, {"geo_recompute": False},
     "Point-PEFT geo_recompute true (default) vs false: the geometric branch's local attention "
     "(norm3, qkv, gather, attention) recomputed in backward"),
)
LEVER_METHODS = ("point_peft",)

# Process-wide levers, set in the measuring process's environment and measured on the CPU in full
# (not --quick) runs where this process's environment is not already the lever's: (name,
# environment, methods, what it shows).
ENV_LEVERS = (
    ("huge pages off", {"THP_MEM_ALLOC_ENABLE": "0"}, ("full", "point_peft"),
     "THP_MEM_ALLOC_ENABLE 1 (set by the harness unless the environment sets it) vs 0: PyTorch's CPU "
     "blocks of 2 MiB or more on transparent huge pages vs 4 KiB pages (fewer page faults when a "
     "step re-allocates its large activations)"),
)


def official_reference(path=None) -> dict:
    """{(backbone, method): row} of the official CPU figures (``OFFICIAL_CPU_CSV``); {} if absent.

    Raises ``BenchSetupError`` naming the file (and line) when a column is missing or a number
    does not parse."""
    import csv

    path = Path(path or OFFICIAL_CPU_CSV)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in OFFICIAL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BenchSetupError(f"{path}: missing column(s) {', '.join(missing)}; expected the columns "
                                      f"{', '.join(OFFICIAL_COLUMNS)} (restore the file from the repository)")
            rows = list(reader)
    except FileNotFoundError:
        return {}
    out = {}
    for line, row in enumerate(rows, start=2):
        try:
            note = OFFICIAL_NOTE.format(cpu=row["cpu"], threads=row["threads"], measured=row["measured"])
            out[(row["backbone"], row["method"])] = {
                "points": int(row["points"]), "batch": int(row["batch"]), "threads": int(row["threads"]),
                "train_step_s": float(row["train_step_s"]), "eval_step_s": float(row["eval_step_s"]),
                "peak_train_memory_bytes": float(row["peak_rss_increase_bytes"]), "cpu": row["cpu"],
                "measured": row["measured"], "how": row["how"], "source": f"{path.name} ({note})"}
        except (TypeError, ValueError) as err:   # a short row (None) or a number that does not parse
            raise BenchSetupError(f"{path}, line {line}: {err}; expected numbers in points, batch, threads, "
                                  "train_step_s, eval_step_s and peak_rss_increase_bytes") from None
    return out


def model_specs(device: str, quick: bool, backbones=None, methods=None, threads: int | None = None,
                precisions=None) -> list[dict]:
    """One spec per case, in registry order (bf16 cases are added on CUDA; ``precisions``, of
    "fp32" and "bf16", narrows them there; None means both)."""
    from models.classifier import BACKBONES, METHODS, default_npoints

    if device == "cuda":
        batch, warmup, steps, eval_steps = 32, (2 if quick else 5), (3 if quick else 20), (3 if quick else 20)
        precisions = tuple(p for p in ("fp32", "bf16") if precisions is None or p in precisions)
    else:  # quick: the whole bench in < 2 minutes on 2 cores
        batch, warmup, steps, eval_steps = (QUICK_CPU_BATCH, 1, 2, 1) if quick else (32, 1, 3, 3)
        precisions = ("fp32",)
    specs = []
    for backbone in BACKBONES:
        if backbones and backbone not in backbones:
            continue
        for method, entry in METHODS.items():  # the method registry, in table order
            if (methods and method not in methods) or not entry.supports(backbone):
                continue
            variants = [(None, {}, {}, {})]
            if method in LEVER_METHODS:
                variants += [(name, b_opts, m_opts, {}) for name, b_opts, m_opts, _ in LEVERS]
            if device == "cpu" and not quick:  # unless this environment is the lever's already
                variants += [(name, {}, {}, env) for name, env, on, _ in ENV_LEVERS if method in on
                             and any(os.environ.get(k) != v for k, v in env.items())]
            for precision in precisions:
                for variant, options, method_options, env in variants:
                    specs.append({"backbone": backbone, "method": method, "family": FAMILY,
                                  "num_classes": NUM_CLASSES, "npoints": default_npoints(backbone, FAMILY),
                                  "batch": batch, "precision": precision, "device": device,
                                  "warmup": warmup, "steps": steps, "eval_warmup": warmup,
                                  "eval_steps": eval_steps, "bank_columns": BANK_COLUMNS, "seed": 0,
                                  "backbone_options": dict(options), "method_options": dict(method_options), "threads": threads,
                                  "variant": variant, "env": dict(env)})
    return specs


def case_name(spec: dict) -> str:
    variant = f", {spec['variant']}" if spec.get("variant") else ""
    return f"{spec['backbone']} / {spec['method']} ({spec['precision']}{variant})"


# ------------------------------------------------------------------ child: one measurement

def measure_one(spec: dict) -> dict:
    """Run one case in this process and return its measured values (plain data)."""
    import statistics

    import torch
    import torch.nn.functional as F

    from harness.bench.common import OpCounter, PeakRSS, random_memory_bank, sync, tensor_peak_bytes
    from harness.params import count_params
    from harness.train import adamw
    from models import ops
    from models.classifier import build_model

    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    model = build_model(spec["backbone"], spec["num_classes"], method=spec["method"], family=spec["family"],
                        method_options=spec.get("method_options") or None, **spec.get("backbone_options", {}))
    counts = count_params(model)
    notes = [n for n in [random_memory_bank(model, spec["bank_columns"])] if n]
    model.to(device)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    b, n = spec["batch"], spec["npoints"]
    pts = (torch.rand(b, n, 3, generator=gen) * 2 - 1).to(device)
    labels = torch.randint(0, spec["num_classes"], (b,), generator=gen).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(trainable, lr=1e-4, weight_decay=0.05)  # the training harness's optimiser
    amp = spec["precision"] == "bf16"

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp)

    def eval_step():
        with torch.no_grad(), autocast():
            model(pts)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(pts).float(), labels)
        loss.backward()
        opt.step()

    cpu_s = {}

    def timed(fn, warmup, steps):
        start = time.process_time()
        times = time_calls(fn, steps, warmup=warmup, device=device)
        cpu_s["train" if fn is train_step else "eval"] = (time.process_time() - start) / (warmup + steps)
        return times

    # the FPS kernel loads lazily on its first call (on the CPU numba: about 105 MiB of llvmlite
    # code): loaded here, before the memory baselines, as torch itself is, since it is a one-off
    # cost of any process that samples points (the data pipeline's FPS), not of training
    ops.fps(pts[:1, :64], 8)
    if device == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model.eval()
        eval_times = timed(eval_step, spec["eval_warmup"], spec["eval_steps"])
        eval_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model.train()
        train_times = timed(train_step, spec["warmup"], spec["steps"])
        train_peak = torch.cuda.max_memory_allocated()
        memory = {"peak_train_memory_bytes": train_peak - base, "peak_eval_memory_bytes": eval_peak - base,
                  "peak_train_tensor_bytes": train_peak - base,
                  "peak_train_memory_abs_bytes": train_peak, "peak_eval_memory_abs_bytes": eval_peak}
        method = "torch.cuda.max_memory_allocated minus allocated before the steps (abs = including weights)"
    else:
        # training first, as in a training run (an epoch of steps before its first evaluation):
        # eval steps first would leave the C allocator's heap cut up in eval's sizes, which adds
        # to the training peak RSS (measured: +190 MiB for Point-PEFT on Point-MAE, +0 for full)
        rss = PeakRSS().start()
        model.train()
        train_times = timed(train_step, spec["warmup"], spec["steps"])
        memory = {"peak_train_memory_bytes": rss.peak_increase()}
        # then one more training step, profiled: its peak of live tensor bytes (what
        # torch.cuda.max_memory_allocated counts on a GPU; RSS also counts glibc's kept heap)
        opt.zero_grad(set_to_none=True)
        memory["peak_train_tensor_bytes"] = tensor_peak_bytes(train_step)
        model.eval()
        eval_times = timed(eval_step, spec["eval_warmup"], spec["eval_steps"])
        # eval's peak as a GPU counts it: live tensors of one more forward (its RSS, after
        # training, would only repeat the training peak)
        memory["peak_eval_memory_bytes"] = tensor_peak_bytes(eval_step)
        method = (f"training first: peak RSS increase over the training steps ({rss.method}; the FPS "
                  "kernel loaded before it); tensors = "
                  "peak live tensor bytes of one more training step (PyTorch profiler allocation events); "
                  "eval = peak live tensor bytes of one more eval forward")
    # one more training step, after the memory measures (under the counting mode PyTorch may run
    # a few ops out of place): its working ops, about its kernel launches on a GPU
    model.train()
    with OpCounter() as counted:
        train_step()
    sync(device)
    train_s, eval_s = statistics.median(train_times), statistics.median(eval_times)
    return {"train_cpu_s": cpu_s["train"], "eval_cpu_s": cpu_s["eval"],"train_step_s": train_s, "eval_step_s": eval_s,
            "train_samples_per_s": b / train_s, "eval_samples_per_s": b / eval_s, "train_ops": counted.ops,
            "train_times": train_times, "eval_times": eval_times, **memory,
            "memory_method": method, "trainable_params": counts.trainable, "total_params": counts.total,
            "threads": torch.get_num_threads(), "notes": notes}


def child_main(spec_json: str) -> int:
    """Entry of ``python -m harness.bench --one SPEC``: print one result line."""
    spec = json.loads(spec_json)
    if spec.get("kind") == "epoch":
        from harness.bench.epoch_cases import measure_epoch
        result = measure_epoch(spec)
    else:
        result = measure_one(spec)
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------ parent

UNITS = {"train_cpu_s": "s", "eval_cpu_s": "s", "train_samples_per_s": "samples/s", "eval_samples_per_s": "samples/s", "train_step_s": "s",
         "eval_step_s": "s", "peak_train_memory_bytes": "bytes", "peak_eval_memory_bytes": "bytes",
         "peak_train_memory_abs_bytes": "bytes", "peak_eval_memory_abs_bytes": "bytes",
         "peak_train_tensor_bytes": "bytes", "train_ops": "count", "trainable_params": "count", "total_params": "count"}


def _entry(spec: dict, status: str, notes: str, result: dict | None = None, wall: float | None = None) -> dict:
    values = {k: result[k] for k in UNITS if result and k in result}
    entry = {"name": case_name(spec), "backbone": spec["backbone"], "method": spec["method"],
             "variant": spec.get("variant"),
             "family": spec["family"], "npoints": spec["npoints"], "batch": spec["batch"],
             "precision": spec["precision"], "status": status,
             "value": values.get("train_samples_per_s"), "unit": "samples/s",
             "values": values, "units": {k: UNITS[k] for k in values},
             "steps": {"warmup": spec["warmup"], "timed": spec["steps"], "eval_warmup": spec["eval_warmup"],
                       "eval_timed": spec["eval_steps"]},
             "notes": notes}
    if result:
        entry["times"] = {"train": result["train_times"], "eval": result["eval_times"]}
        entry["memory_method"] = result["memory_method"]
        entry["threads"] = result["threads"]
    if wall is not None:
        entry["process_wall_s"] = wall
    official = official_reference().get((spec["backbone"], spec["method"])) if spec["device"] == "cpu" else None
    if official and official_applies(official, spec):
        entry["official_cpu"] = {**official, **compare_official(official, values, device_name("cpu"),
                                                                 result.get("threads") if result else None)}
    return entry


def official_applies(official: dict, case: dict) -> bool:
    """Whether the official figures are of this case's setup: a default build (no lever
    variant), CPU fp32, the reference's batch and points."""
    return (not case.get("variant") and case.get("device", "cpu") == "cpu" and case.get("precision") == "fp32"
            and case.get("batch") == official["batch"] and case.get("npoints") == official["points"])


def compare_official(official: dict, values: dict, cpu: str, threads: int | None) -> dict:
    """``{"train_speedup", "eval_speedup"}`` (official s / ours) when the times compare, else
    ``{"not_comparable": why}`` (another CPU, as ``device_name`` writes it, or another torch
    thread count; a time ratio across those measures them, not the code); {} without times."""
    unlike = []
    if cpu != official["cpu"]:
        unlike.append(f"they were measured on {official['cpu']}, this run on {cpu}")
    if threads is not None and int(threads) != official["threads"]:
        unlike.append(f"they used {official['threads']} threads, this run {threads}")
    if unlike:
        return {"not_comparable": "not comparable: " + " and ".join(unlike)
                + "; a time ratio across machines or thread counts measures those, not the code"}
    if "train_step_s" not in values or "eval_step_s" not in values:
        return {}
    return {"train_speedup": official["train_step_s"] / values["train_step_s"],
            "eval_speedup": official["eval_step_s"] / values["eval_step_s"]}


def run_models(device: str, quick: bool, log=print, backbones=None, methods=None,
               timeout_s: float | None = None, threads: int | None = None, precisions=None,
               entries: list | None = None) -> list[dict]:
    """Each case in a fresh process; a failing case becomes an ``error`` entry, not a crash.

    ``entries``: the list to append each case's entry to as it finishes (returned)."""
    try:
        specs = model_specs(device, quick, backbones, methods, threads, precisions)
    except Exception as err:  # noqa: BLE001 - e.g. a registry that does not import yet
        entries = [] if entries is None else entries
        entries.append({"name": "models", "status": "error", "value": None, "unit": "samples/s", "values": {},
                        "units": {}, "notes": f"error: cannot list the models: {short_error(err)}"})
        return entries
    return run_specs(specs, log, timeout_s or (600 if quick else 3600), entries)


def run_specs(specs: list[dict], log=print, timeout_s: float = 3600, entries: list | None = None) -> list[dict]:
    """Measure each spec in a fresh ``python -m harness.bench --one`` process (this process's
    environment, updated by the spec's ``env``); each entry is appended to ``entries`` (a new
    list by default) as its case finishes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    entries = [] if entries is None else entries
    for spec in specs:
        cmd = [sys.executable, "-m", "harness.bench", "--one", json.dumps(spec)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env={**env, **spec.get("env", {})}, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            entries.append(_entry(spec, "error", f"error: timed out after {timeout_s:.0f} s"))
            log(f"models: {case_name(spec)} timed out")
            continue
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if proc.returncode != 0 or not lines:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            entries.append(_entry(spec, "error", f"error: exit {proc.returncode}: {tail[-400:]}", wall=wall))
            log(f"models: {case_name(spec)} failed: {tail[-200:]}")
            continue
        result = json.loads(lines[-1][len(RESULT_MARK):])
        notes = "; ".join(result["notes"])
        entries.append(_entry(spec, "ok", notes, result, wall))
        mem = result["peak_train_memory_bytes"] / 2**30
        tensors = result.get("peak_train_tensor_bytes")
        tensors = f", tensors {tensors / 2**30:.2f} GiB" if tensors is not None else ""
        log(f"models: {case_name(spec)} train {result['train_samples_per_s']:.2f} samples/s, "
            f"eval {result['eval_samples_per_s']:.2f} samples/s, peak train +{mem:.2f} GiB{tensors} ({wall:.0f} s)")
    return entries


def epoch_seconds(samples_per_s: float | None, samples: int = 11416) -> float | None:
    """Time of one epoch of ``samples`` at the measured rate (PB_T50_RS train split)."""
    if not samples_per_s:
        return None
    return samples / samples_per_s if math.isfinite(samples_per_s) else None
