"""``python -m harness.bench.step_profile``: where a training step's time goes (a diagnosis aid).

Not part of the scored bench. Prints, for one device:

* FPS timings of ``models.ops.furthest_point_sample`` (the path the device takes: on CUDA
  pointnet2_ops, else the Triton kernel; on the CPU numba; each when installed) beside the
  dense PyTorch loop, batch B, and whether both give the same indices;
* per backbone x method: milliseconds per training step (bf16 autocast on CUDA, fp32 on the
  CPU; random clouds, AdamW), with the data pipeline's FPS to ``point_all`` + random subset +
  scale-and-translate, and without it (the first ``npoints`` points); peak allocated GiB on CUDA;
* with ``--profile``: the PyTorch profiler's top ops of two steps (without the data FPS) by
  self device time and by CPU time with their call counts: a step that launches thousands of
  small kernels shows up as CPU time far above device time; and, for a training step and an
  eval forward, the share of the self time spent in dense matrix products (``PRODUCT_OPS``) and
  in the attention kernel, and the multiply-adds of a training step per cloud beside those of
  the official patch-encoder form (``multiply_adds``). Those products are the same
  multiply-adds in any implementation of the same network, so the rest of the step bounds what
  code outside them can gain at the same numerics: with products a share s of the step,
  removing everything else makes it 1 / s as fast. (The products themselves run at the speed
  of the library doing them: ``models.layers.linear`` takes oneDNN's inner product on the CPU.)

Example (a GPU node): ``python -m harness.bench.step_profile --backbone point_mae --profile``.
"""
from __future__ import annotations

import argparse
import sys
import time


# Self time of these ATen / oneDNN ops is "matrix products" in the --profile summary: GEMMs
# (linear layers, 1x1 convolutions run as linears, einsum / matmul), oneDNN's inner product,
# and convolutions. The fused attention kernels are reported apart (softmax and masking inside).
PRODUCT_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
                         "mkldnn::_linear_pointwise", "aten::mkldnn_convolution",
                         "aten::convolution_backward", "aten::_convolution"})
ATTENTION_PREFIX = "aten::_scaled_dot_product"


def product_shares(events) -> tuple[float, float, float]:
    """(matrix-product share, attention-kernel share, total self seconds) of a profile's
    ``key_averages()`` on the CPU: self CPU time of ``PRODUCT_OPS`` and of the fused attention
    ops (forward and backward) over all ops' self CPU time."""
    total = sum(e.self_cpu_time_total for e in events)
    if total <= 0:
        return 0.0, 0.0, 0.0
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCT_OPS)
    attention = sum(e.self_cpu_time_total for e in events if e.key.startswith(ATTENTION_PREFIX))
    return products / total, attention / total, total / 1e6


def multiply_adds(backbone: str, method: str) -> tuple[float, float]:
    """Multiply-adds per cloud of one training step (forward and backward, batch 2, CPU, counted by
    ``torch.utils.flop_counter``): (this project's model, the same model with its patch encoders
    in the official form). The official ``Encoder`` runs the second stage's first 1x1 conv on
    [global; local] for every point; ``MiniPointNet._encode`` (and ``_encode_frozen``, a frozen
    stem's) runs the global half once per group (same maths). Products that run through oneDNN's
    inner product (``models.layers.linear``: float32 linears on the CPU, forward and input
    gradient) are counted as the ``F.linear`` they equal. Other differences from the official
    code (its Point-PEFT's query encoder re-groups the cloud and re-encodes the patches; ours
    reuses the backbone's) are not counted."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from harness.bench.common import random_memory_bank
    from models import layers
    from models.classifier import build_model, default_npoints

    def official_form(self, rows: torch.Tensor) -> torch.Tensor:
        n, k, c = rows.shape
        feat = layers._channels_last(self.first_conv, rows.reshape(n * k, c)).view(n, k, -1)
        feat = torch.cat([feat.max(dim=1).values[:, None].expand(-1, k, -1), feat], dim=-1)
        return layers._channels_last(self.second_conv, feat.view(n * k, -1)).view(n, k, -1).max(dim=1).values

    counts = []
    onednn = layers._ONEDNN_LINEAR
    # The counter knows ATen's products, not oneDNN's inner product, which ``layers.linear`` runs
    # for float32 CPU linears: count those as the F.linear they equal.
    layers._ONEDNN_LINEAR = False
    try:
        for official in (False, True):
            torch.manual_seed(0)
            model = build_model(backbone, 15, method=method, family="scan")
            random_memory_bank(model, 64)
            model.train()
            for enc in (m for m in model.modules() if isinstance(m, layers.MiniPointNet)) if official else ():
                enc._encode = enc._encode_frozen = official_form.__get__(enc)
            pts = torch.rand(2, default_npoints(backbone, "scan"), 3)
            with FlopCounterMode(display=False) as counter:
                F.cross_entropy(model(pts), torch.tensor([0, 1])).backward()
            counts.append(counter.get_total_flops() / 2 / 2)   # 2 FLOPs per multiply-add, 2 clouds
    finally:
        layers._ONEDNN_LINEAR = onednn
    return counts[0], counts[1]


def _timer(device: str):
    from harness.bench.common import sync as device_sync

    def sync() -> None:
        device_sync(device)

    def timeit(fn, repeats: int) -> float:
        """Mean milliseconds per call after min(3, repeats) warm-up calls."""
        for _ in range(min(3, repeats)):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - start) / repeats * 1e3
    return timeit, sync


def make_step(backbone: str, method: str, device: str, batch: int):
    """A training step closure ``step(pipeline: bool)`` on fixed random clouds of 2,048 points."""
    import torch
    import torch.nn.functional as F

    from harness.bench.common import random_memory_bank
    from harness.data.transforms import point_all_for, sample_points, scale_and_translate
    from harness.train import adamw
    from models.classifier import build_model, default_npoints

    torch.manual_seed(0)
    model = build_model(backbone, 15, method=method, family="scan")
    random_memory_bank(model, 11416)
    model.to(device).train()
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    npoints = default_npoints(backbone, "scan")
    point_all = point_all_for(npoints, 2048)
    sub_gen, aug_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    raw = torch.randn(batch, 2048, 3).to(device)
    labels = torch.randint(0, 15, (batch,)).to(device)

    def step(pipeline: bool = True) -> None:
        pts = sample_points(raw, npoints, point_all, generator=sub_gen) if pipeline else raw[:, :npoints]
        pts = scale_and_translate(pts, generator=aug_gen)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(pts)
        F.cross_entropy(logits.float(), labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def eval_forward() -> None:
        model.eval()
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            model(raw[:, :npoints])
        model.train()
    step.eval_forward = eval_forward
    return step


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from models import ops
    from models.classifier import BACKBONES, METHODS

    p = argparse.ArgumentParser(prog="python -m harness.bench.step_profile", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--batch", type=int, default=32, help="clouds per step (default 32)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per case (default 10)")
    p.add_argument("--backbone", default=",".join(BACKBONES), help="comma-separated (default all)")
    p.add_argument("--method", default="full,point_peft", help="comma-separated (default full,point_peft)")
    p.add_argument("--fps-only", action="store_true", help="only the FPS timings")
    p.add_argument("--profile", action="store_true", help="also print the profiler's top ops per case; on the CPU also a "
                   "training step's multiply-adds per cloud (ours and the official patch-encoder form) "
                   "and the share of a training step and an eval forward in matrix products and attention")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.batch < 1 or args.repeats < 1:
        print("error: --batch and --repeats must be >= 1", file=sys.stderr)
        return 2
    backbones = [b for b in args.backbone.split(",") if b]
    methods = [m for m in args.method.split(",") if m]
    for kind, names, valid in (("backbone", backbones, BACKBONES), ("method", methods, METHODS)):
        bad = [n for n in names if n not in valid]
        if bad or not names:
            print(f"error: unknown {kind}(s) {bad or names}; valid: {', '.join(valid)}", file=sys.stderr)
            return 2
    timeit, sync = _timer(device)
    for n, m in ((2048, 2048), (2048, 128), (2048, 512), (8192, 1024)):
        x = torch.randn(args.batch, n, 3, device=device)
        fast = timeit(lambda: ops.furthest_point_sample(x, m), args.repeats)
        dense = timeit(lambda: ops.furthest_point_sample_dense(x, m), min(args.repeats, 3))
        same = torch.equal(ops.furthest_point_sample(x, m), ops.furthest_point_sample_dense(x, m))
        print(f"FPS {n}->{m} (B={args.batch}): {fast:.2f} ms (dense loop {dense:.2f} ms); same indices: {same}",
              flush=True)
    if args.fps_only:
        return 0
    for backbone in backbones:
        for method in methods:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = make_step(backbone, method, device, args.batch)
            with_fps, without = timeit(step, args.repeats), timeit(lambda: step(False), args.repeats)
            peak = f"; peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else ""
            print(f"{backbone}/{method}: step {with_fps:.1f} ms with the data FPS, {without:.1f} ms without{peak}",
                  flush=True)
            if args.profile:
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
                with profile(activities=acts) as prof:
                    step(False)
                    step(False)
                    sync()
                table = prof.key_averages()
                if device == "cuda":
                    print(table.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
                print(table.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60))
                if device == "cpu":
                    ours, official = multiply_adds(backbone, method)
                    print(f"{backbone}/{method}: {ours / 1e9:.2f} G multiply-adds per cloud per training step, "
                          f"{official / 1e9:.2f} G with the official patch-encoder form ({ours / official:.2f}x)",
                          flush=True)
                    step.eval_forward()  # warm-up (the eval path's first call)
                    with profile(activities=acts) as prof_eval:
                        step.eval_forward()
                        step.eval_forward()
                    for what, events in (("training step", table), ("eval forward", prof_eval.key_averages())):
                        products, attention, total = product_shares(events)
                        print(f"{backbone}/{method} {what}: matrix products {products:.0%} of the self CPU time, "
                              f"attention kernel {attention:.0%}, everything else {1 - products - attention:.0%} "
                              f"({total:.2f} s over two); at most {1 / max(products + attention, 1e-9):.2f}x "
                              "as fast with everything but the products and attention gone", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
