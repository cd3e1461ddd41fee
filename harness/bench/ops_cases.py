"""Bench part ``ops``: our FPS and kNN against the libraries people would use instead.

Cases (batch 32, points uniform in [-1, 1]^3, fixed seed):
  fps_2048_to_128    FPS of 128 of 2048 points (Point-MAE / Point-PEFT on ScanObjectNN)
  fps_8192_to_1024   FPS of 1024 of 8192 points (ModelNet40 8k -> 1k preprocessing scale)
  knn_32_of_2048     32 nearest of 2048 points for 128 centers (the FPS centers)

"ours" is ``models.ops`` without the CUDA extensions, on the bench device: on the CPU the
numba-compiled kernel when numba is installed (the PyTorch paths are timed beside it). Others, each timed when importable and skipped with a note
when not: CPU - fpsample (FPS, one cloud per call, so the batch is a Python loop),
torch_cluster, pytorch3d; CUDA - pointnet2_ops, knn_cuda, torch_cluster, pytorch3d.
The implementations of a case are timed interleaved (each round calls each once, after one
warm-up call each), so load on the machine hits them alike. Reported: median wall seconds over
the repeats, and ours / theirs (> 1 = ours slower); the same for CPU (process) seconds
(``cpu_s``, ``ratio_cpu_ours_over_this``), which a loaded machine distorts less.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from harness.bench.common import median, short_error, sync
from models import ops

FPS_CASES = (("fps_2048_to_128", 32, 2048, 128), ("fps_8192_to_1024", 32, 8192, 1024))
KNN_CASES = (("knn_32_of_2048", 32, 2048, 128, 32),)
FPSAMPLE_H = 5  # KD-tree height of bucket_fps_kdline_sampling; fastest of 3/5/7/9 on both cases here

FPS_SEMANTICS = ("ours = pointnet2_ops kernel semantics: start at index 0, skip |p|^2 <= 1e-3, "
                 "kernel tie order")


def _ours_fps() -> Callable:
    return getattr(ops, "furthest_point_sample_fast", ops.furthest_point_sample_reference)


def _fps_impls(device: str, quick: bool) -> list[tuple[str, Callable[[torch.Tensor, int], Callable], str]]:
    """(name, make(xyz, m) -> zero-arg callable, note); make raises ImportError when absent."""
    impls = []

    def ours(xyz, m):
        fn = _ours_fps()
        return lambda: fn(xyz, m)
    fast = _ours_fps() is getattr(ops, "furthest_point_sample_fast", None)
    if fast and device == "cpu":
        path = (" (on the CPU: the numba-compiled block-pruned kernel, models.ops_jit)"
                if ops.kernels_used("cpu")["fps"] == "numba" else
                f" (on the CPU, numba not installed: the block-pruned path for N >= {ops.FPS_BLOCKS_MIN_POINTS}, "
                "the dense loop below)")
    elif fast and device == "cuda" and ops._triton() is not None:   # pointnet2_ops or not
        from models.ops_triton import MAX_POINTS
        path = f" (on CUDA: the Triton kernel, models.ops_triton, for float32 clouds of <= {MAX_POINTS:,} points)"
    else:
        path = ""
    impls.append(("ours", ours, f"models.ops.{_ours_fps().__name__}{path}; " + FPS_SEMANTICS))
    if not quick:
        if device == "cpu" and hasattr(ops, "furthest_point_sample_blocks"):
            def ours_blocks(xyz, m):
                return lambda: ops.furthest_point_sample_blocks(xyz, m)
            impls.append(("ours: PyTorch block-pruned", ours_blocks,
                          "models.ops.furthest_point_sample_blocks (without numba the path for N >= "
                          f"{ops.FPS_BLOCKS_MIN_POINTS}, the dense loop below that; same indices)"))
        def ours_ref(xyz, m):
            return lambda: ops.furthest_point_sample_reference(xyz, m)
        impls.append(("ours: reference loop", ours_ref,
                      "models.ops.furthest_point_sample_reference (the readable emulation; same indices)"))

        def ours_dense(xyz, m):
            return lambda: ops.furthest_point_sample_dense(xyz, m)
        impls.append(("ours: dense loop", ours_dense,
                      "models.ops.furthest_point_sample_dense (every point every step; same indices)"))

    if device == "cpu":
        def fpsample_kdline(xyz, m):
            import fpsample
            import numpy as np
            clouds = xyz.numpy()
            return lambda: torch.from_numpy(np.stack(
                [fpsample.bucket_fps_kdline_sampling(c, m, h=FPSAMPLE_H) for c in clouds]).astype(np.int64))
        impls.append((f"fpsample.bucket_fps_kdline_sampling(h={FPSAMPLE_H})", fpsample_kdline,
                      "exact FPS (QuickFPS), fpsample's fastest exact function here; one cloud per call; "
                      "in 1.0.2 it picks its own start point (start_idx is not honoured) and skips nothing "
                      "near the origin, so indices differ from ours; same work"))

        def fpsample_vanilla(xyz, m):
            import fpsample
            import numpy as np
            clouds = xyz.numpy()
            return lambda: torch.from_numpy(np.stack(
                [fpsample.fps_sampling(c, m, start_idx=0) for c in clouds]).astype(np.int64))
        impls.append(("fpsample.fps_sampling", fpsample_vanilla,
                      "exact vanilla FPS from index 0, one cloud per call; no skip near the origin"))
    else:
        def pn2(xyz, m):
            from pointnet2_ops import pointnet2_utils
            x = xyz.float().contiguous()
            return lambda: pointnet2_utils.furthest_point_sample(x, m)
        impls.append(("pointnet2_ops", pn2, "the official CUDA kernel (what ours emulates)"))

    def tc(xyz, m):
        import torch_cluster
        b, n, _ = xyz.shape
        flat = xyz.reshape(b * n, 3)
        batch = torch.arange(b, device=xyz.device).repeat_interleave(n)
        return lambda: torch_cluster.fps(flat, batch, ratio=m / n, random_start=False)
    impls.append(("torch_cluster.fps", tc, "flattened batch with a batch vector; starts at each cloud's "
                  "first point; no skip near the origin"))

    def p3d(xyz, m):
        from pytorch3d.ops import sample_farthest_points
        return lambda: sample_farthest_points(xyz, K=m, random_start_point=False)
    impls.append(("pytorch3d.sample_farthest_points", p3d, "starts at index 0; returns points and indices"))
    return impls


def _knn_impls(device: str) -> list[tuple[str, Callable, str]]:
    impls = []

    def ours(ref, query, k):
        return lambda: ops.knn_torch(ref, query, k)
    impls.append(("ours", ours, "models.ops.knn_torch: knn_cuda semantics (ascending distance, ties by "
                  "lower index, distances returned)"))

    def ours_point(ref, query, k):
        return lambda: ops.knn_point(k, ref, query)
    impls.append(("ours: knn_point", ours_point, "models.ops.knn_point (Point-BERT's: expansion distances, "
                  "unordered top-k; not exact-tie compatible)"))
    if device == "cuda":
        def kc(ref, query, k):
            from knn_cuda import KNN
            knn = KNN(k=k, transpose_mode=True)
            return lambda: knn(ref, query)
        impls.append(("knn_cuda", kc, "the official CUDA kNN (what ours emulates)"))

    def tc(ref, query, k):
        import torch_cluster
        b, n, _ = ref.shape
        m = query.shape[1]
        bx = torch.arange(b, device=ref.device).repeat_interleave(n)
        by = torch.arange(b, device=ref.device).repeat_interleave(m)
        x, y = ref.reshape(b * n, 3), query.reshape(b * m, 3)
        return lambda: torch_cluster.knn(x, y, k, bx, by)
    impls.append(("torch_cluster.knn", tc, "flattened batch with batch vectors; no distances returned"))

    def p3d(ref, query, k):
        from pytorch3d.ops import knn_points
        return lambda: knn_points(query, ref, K=k, return_sorted=True)
    impls.append(("pytorch3d.knn_points", p3d, "returns squared distances, sorted"))
    return impls


def _entry(case: str, title: str, impl: str, note: str, times: list[float] | None = None,
           status: str = "ok", ours: float | None = None, cpu: list[float] | None = None,
           ours_cpu: float | None = None) -> dict:
    value = median(times) if times else None
    cpu_value = median(cpu) if cpu else None
    ratio = ratio_cpu = None
    if value and ours is not None and not impl.startswith("ours"):
        ratio = ours / value
        ratio_cpu = ours_cpu / cpu_value if cpu_value and ours_cpu is not None else None
    return {"name": f"{title} [{impl}]", "case": case, "impl": impl, "status": status,
            "value": value, "unit": "s", "repeats": times or [], "ratio_ours_over_this": ratio,
            "cpu_s": cpu_value, "cpu_repeats": cpu or [], "ratio_cpu_ours_over_this": ratio_cpu,
            "notes": note}


def _run_case(case: str, title: str, impls, make_args: tuple, device: str, repeats: int, log) -> list[dict]:
    """Time every implementation of one case, interleaved: each round calls each once, so a
    load change on the machine hits all of them alike. Wall and CPU (process) seconds."""
    entries, ready = {}, []
    for name, make, note in impls:
        try:
            fn = make(*make_args)
            fn()  # warm-up
            sync(device)
        except ImportError as err:
            entries[name] = _entry(case, title, name, f"skipped: not installed ({short_error(err)})",
                                   status="skipped")
            continue
        except Exception as err:  # noqa: BLE001 - a broken library must not stop the bench
            entries[name] = _entry(case, title, name, f"error: {short_error(err)}", status="error")
            continue
        ready.append((name, fn, note))
    wall = {name: [] for name, _, _ in ready}
    cpu = {name: [] for name, _, _ in ready}
    for _ in range(repeats):
        for name, fn, note in ready:
            if name in entries:  # failed in an earlier round
                continue
            try:
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                sync(device)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            except Exception as err:  # noqa: BLE001
                entries[name] = _entry(case, title, name, f"error: {short_error(err)}", status="error")
    ours = median(wall["ours"]) if wall.get("ours") and "ours" not in entries else None
    ours_cpu = median(cpu["ours"]) if ours is not None else None
    for name, _, note in ready:
        if name not in entries:
            entries[name] = _entry(case, title, name, note, wall[name], ours=ours, cpu=cpu[name], ours_cpu=ours_cpu)
            log(f"ops: {title} [{name}] {median(wall[name]):.4f} s (cpu {median(cpu[name]):.4f} s)")
    return [entries[name] for name, _, _ in impls if name in entries]


def run_ops(device: str, quick: bool, log=print, seed: int = 0) -> list[dict]:
    """Every ops case x implementation: median seconds over the repeats, ours / this."""
    repeats = 3 if quick else 5
    gen = torch.Generator().manual_seed(seed)
    entries = []
    for case, b, n, m in FPS_CASES:
        xyz = (torch.rand(b, n, 3, generator=gen) * 2 - 1).to(device)
        title = f"FPS {n} -> {m} (batch {b})"
        entries += _run_case(case, title, _fps_impls(device, quick), (xyz, m), device, repeats, log)
    for case, b, n, m, k in KNN_CASES:
        ref = (torch.rand(b, n, 3, generator=gen) * 2 - 1).to(device)
        query = ops.gather_points(ref, _ours_fps()(ref, m))
        title = f"kNN {k} of {n} points for {m} centers (batch {b})"
        entries += _run_case(case, title, _knn_impls(device), (ref, query, k), device, repeats, log)
    return entries
