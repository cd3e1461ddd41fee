"""Bench part ``epoch``: one real training epoch of PB_T50_RS size per backbone x method.

Unlike the ``models`` part (one fixed random batch), an epoch here goes through everything a
training run does per step: the ScanObjectNN loader reading an h5 file in the official layout
(shuffled, batch 32, drop_last), FPS to ``point_all`` and the random subset shared by the batch
(``harness.data.transforms.sample_points``), the scale-and-translate augmentation, forward,
cross-entropy, backward and AdamW. Cases: backbone x {full, point_peft} x precision (fp32, bf16
autocast) x torch.compile (off, on); on the CPU only fp32 without compile (bf16 and compile
are CUDA cases). Each case runs in a fresh process (``python -m harness.bench --one SPEC``).

The data: ``epoch_samples`` clouds (default 11,416 = the PB_T50_RS train split) of 2,048
points (each model reads its official input size from them: 2,048, Point-BERT 1,024), written once per bench run to a temporary folder by tiling a small synthetic set
(``harness.data.synthetic``, 15 classes) to the wanted count, so that writing the file takes
seconds; the loader and the steps do not depend on the clouds' content.

Reported per case: seconds for the epoch (after warm-up steps on the first batches, which are
not counted: compilation and allocator warm-up), samples/s, peak memory (CUDA
``max_memory_allocated`` over the epoch, absolute, and its increase over what was allocated
before the epoch; CPU peak RSS increase).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.common import ROOT, BenchSetupError

DATASET = "scanobjectnn_pb_t50_rs"
PB_T50_RS_TRAIN = 11416
BATCH = 32
NUM_CLASSES = 15
EPOCH_METHODS = ("full", "point_peft")
RESULT_MARK = "BENCH_RESULT "


def epoch_specs(device: str, samples: int, root: str, backbones=None, threads: int | None = None,
                warmup: int = 2, precisions=None, compiles=None) -> list[dict]:
    """One spec per backbone x method x precision x compile (fp32 eager only on the CPU).

    On CUDA ``precisions`` (of "fp32", "bf16") and ``compiles`` (of False, True) narrow the
    grid; None means all.
    """
    from models.classifier import BACKBONES, default_npoints

    if device == "cuda":
        grid = [(p, c) for p in ("fp32", "bf16") for c in (False, True)
                if (precisions is None or p in precisions) and (compiles is None or c in compiles)]
        workers = 4
    else:
        grid, workers = [("fp32", False)], 0
    specs = []
    for backbone in BACKBONES:
        if backbones and backbone not in backbones:
            continue
        for method in EPOCH_METHODS:
            for precision, compiled in grid:
                specs.append({"kind": "epoch", "backbone": backbone, "method": method, "precision": precision,
                              "compile": compiled, "device": device, "samples": samples, "root": root,
                              "batch": BATCH, "npoints": default_npoints(backbone, "scan"), "warmup": warmup,
                              "workers": workers, "threads": threads, "seed": 0, "backbone_options": {},
                              "method_options": {}})
    return specs


def case_name(spec: dict) -> str:
    return (f"{spec['backbone']} / {spec['method']} ({spec['precision']}, "
            f"compile {'on' if spec['compile'] else 'off'})")


def write_dataset(out: Path, samples: int, seed: int = 0) -> Path:
    """A PB_T50_RS training file of ``samples`` clouds in the official layout under ``out``."""
    import h5py
    import numpy as np

    from harness.data.scanobjectnn import VARIANTS, split_file
    from harness.data.synthetic import write_synthetic

    small = out / "pool"
    write_synthetic(DATASET, small, train_per_class=4, test_per_class=1, seed=seed)
    with h5py.File(split_file(DATASET, small, "train"), "r") as f:
        data, label, mask = f["data"][()], f["label"][()], f["mask"][()]
    reps = np.arange(samples) % len(label)
    target = out / VARIANTS[DATASET].folder
    target.mkdir(parents=True, exist_ok=True)
    with h5py.File(split_file(DATASET, out, "train"), "w") as f:
        f["data"], f["label"], f["mask"] = data[reps], label[reps], mask[reps]
    return out


# ------------------------------------------------------------------ child: one epoch

def measure_epoch(spec: dict) -> dict:
    """Run warm-up steps, then one full epoch; return its seconds and peak memory."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from harness.bench.common import PeakRSS, random_memory_bank, sync
    from harness.data import build_dataset
    from harness.data.transforms import point_all_for, sample_points, scale_and_translate
    from harness.train import adamw, compile_model
    from models.classifier import build_model

    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    ds = build_dataset(DATASET, spec["root"], "train")
    gen = torch.Generator().manual_seed(spec["seed"])
    loader = DataLoader(ds, batch_size=spec["batch"], shuffle=True, drop_last=True, generator=gen,
                        num_workers=spec["workers"], pin_memory=device == "cuda")
    if len(loader) == 0:
        raise ValueError(f"--epoch-samples {len(ds)} is less than one batch of {spec['batch']}")
    model = build_model(spec["backbone"], NUM_CLASSES, method=spec["method"], family="scan",
                        method_options=spec["method_options"] or None, **spec["backbone_options"])
    notes = [n for n in [random_memory_bank(model, PB_T50_RS_TRAIN)] if n]
    model.to(device).train()
    fwd = compile_model(model) if spec["compile"] else model
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    amp = spec["precision"] == "bf16"
    point_all = point_all_for(spec["npoints"], ds[0][0].shape[0])
    sub_gen, aug_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def step(pts, labels):
        pts = pts.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        pts = scale_and_translate(sample_points(pts, spec["npoints"], point_all, generator=sub_gen),
                                  generator=aug_gen)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            logits = fwd(pts)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    batches = iter(loader)
    first = next(batches)
    for _ in range(spec["warmup"]):
        step(*first)
    sync(device)
    base = None
    if device == "cuda":
        base = torch.cuda.memory_allocated()   # weights, optimizer state, memory bank: held all epoch
        torch.cuda.reset_peak_memory_stats()
    rss = PeakRSS().start()
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    for pts, labels in loader:
        step(pts, labels)
        count += labels.shape[0]
    sync(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    increase = None
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        increase = peak - base
        method = ("torch.cuda.max_memory_allocated over the epoch (absolute; the increase over what was "
                  "allocated before it beside it)")
    else:
        peak, method = rss.peak_increase(), f"peak RSS increase over the epoch ({rss.method})"
    return {"epoch_s": seconds, "epoch_cpu_s": cpu, "samples": count, "steps": len(loader),
            "samples_per_s": count / seconds, "peak_memory_bytes": peak, "peak_increase_bytes": increase,
            "memory_method": method,
            "threads": torch.get_num_threads(), "notes": notes}


# ------------------------------------------------------------------ parent

def _entry(spec: dict, status: str, notes: str, result: dict | None = None) -> dict:
    values = {k: result.get(k) for k in ("epoch_s", "epoch_cpu_s", "samples", "steps", "samples_per_s",
                                         "peak_memory_bytes", "peak_increase_bytes")} if result else {}
    entry = {"name": case_name(spec), "backbone": spec["backbone"], "method": spec["method"],
             "precision": spec["precision"], "compile": spec["compile"], "batch": spec["batch"],
             "npoints": spec["npoints"], "samples": spec["samples"], "status": status,
             "value": values.get("epoch_s"), "unit": "s", "values": values, "notes": notes}
    if result:
        entry["memory_method"] = result["memory_method"]
    return entry


def run_epochs(device: str, samples: int = PB_T50_RS_TRAIN, log=print, backbones=None,
               threads: int | None = None, timeout_s: float = 3600, precisions=None,
               compiles=None, entries: list | None = None) -> list[dict]:
    """Every epoch case in a fresh process over one temporary dataset of ``samples`` clouds
    (``precisions`` / ``compiles``: see ``epoch_specs``); each entry is appended to
    ``entries`` (a new list by default) as its case finishes."""
    if samples < BATCH:
        raise BenchSetupError(f"--epoch-samples must be at least one batch ({BATCH}), got {samples}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    entries = [] if entries is None else entries
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        t0 = time.perf_counter()
        root = write_dataset(Path(tmp), samples)
        log(f"epoch: wrote {samples} synthetic PB_T50_RS clouds in {time.perf_counter() - t0:.0f} s")
        for spec in epoch_specs(device, samples, str(root), backbones, threads, precisions=precisions,
                                compiles=compiles):
            cmd = [sys.executable, "-m", "harness.bench", "--one", json.dumps(spec)]
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                entries.append(_entry(spec, "error", f"error: timed out after {timeout_s:.0f} s"))
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
            if proc.returncode != 0 or not lines:
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                entries.append(_entry(spec, "error", f"error: exit {proc.returncode}: {tail[-400:]}"))
                log(f"epoch: {case_name(spec)} failed: {tail[-200:]}")
                continue
            result = json.loads(lines[-1][len(RESULT_MARK):])
            entries.append(_entry(spec, "ok", "; ".join(result["notes"]), result))
            log(f"epoch: {case_name(spec)} {result['epoch_s']:.1f} s / epoch of {result['samples']} samples, "
                f"peak {result['peak_memory_bytes'] / 2**30:.2f} GiB")
    return entries


def epoch_targets(report: dict) -> list[tuple[str, str, float | None, str]]:
    """(backbone, kind, value, notes) of the GPU epoch targets, from the epoch entries.

    kinds: "peft_le_full" (Point-PEFT epoch / full epoch), "peft_seconds" (Point-PEFT bf16 epoch,
    seconds), "peft_memory" (Point-PEFT peak / full peak); each for the fastest compile setting
    in bf16. Values are None (not measured) off CUDA or for an epoch smaller than PB_T50_RS.
    """
    entries = [e for e in report.get("epoch", []) if e.get("status") == "ok"]
    backbones = list(dict.fromkeys(e["backbone"] for e in report.get("epoch", []) if "backbone" in e))
    out = []
    for backbone in backbones:
        def best(method):
            cands = [e for e in entries if e["backbone"] == backbone and e["method"] == method
                     and e["precision"] == "bf16"]
            return min(cands, key=lambda e: e["value"]) if cands else None
        full, peft = best("full"), best("point_peft")
        if report["device"] != "cuda":
            why = "a GPU target: run with --device cuda --epoch"
            out += [(backbone, k, None, why) for k in ("peft_le_full", "peft_seconds", "peft_memory")]
            continue
        if not (full and peft):
            why = "needs full and point_peft bf16 epochs measured"
            out += [(backbone, k, None, why) for k in ("peft_le_full", "peft_seconds", "peft_memory")]
            continue
        size = peft["values"]["samples"]
        small = f"epoch of {size} samples, targets need {PB_T50_RS_TRAIN}" if size < PB_T50_RS_TRAIN - BATCH else ""
        compile_note = lambda e: f"compile {'on' if e['compile'] else 'off'}"  # noqa: E731
        out.append((backbone, "peft_le_full", None if small else peft["value"] / full["value"],
                    small or f"Point-PEFT {peft['value']:.2f} s ({compile_note(peft)}) vs full "
                    f"{full['value']:.2f} s ({compile_note(full)}), bf16"))
        out.append((backbone, "peft_seconds", None if small else peft["value"],
                    small or f"bf16, {compile_note(peft)}, on {report['device_name']}"))
        a, b = peft["values"]["peak_memory_bytes"], full["values"]["peak_memory_bytes"]
        ia, ib = peft["values"].get("peak_increase_bytes"), full["values"].get("peak_increase_bytes")
        increase = (f"; increase over what the epoch started with: {ia / 2**30:.2f} vs {ib / 2**30:.2f} GiB "
                    f"({ia / ib:.2f}x)" if ia is not None and ib else "")
        out.append((backbone, "peft_memory", None if small or not b else a / b,
                    small or f"{a / 2**30:.2f} GiB vs {b / 2**30:.2f} GiB peak (absolute), bf16{increase}"))
    return out


def fast_gpu(name: str) -> bool:
    """Whether the device name is an H100 / H200 (the 5 s epoch target's hardware)."""
    return any(tag in (name or "") for tag in ("H100", "H200"))
