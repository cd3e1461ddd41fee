"""Shared pieces of the bench: timing, peak memory, environment facts, entry helpers."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_VERSION = 1
DEVICES = ("cpu", "cuda")
PARTS = ("ops", "models", "tooling", "epoch", "scaling")
DEFAULT_PARTS = ("ops", "models", "tooling")  # a plain `bench`; epoch and scaling are asked for
EXTRA_PARTS = ("epoch", "scaling")
STATUSES = ("pass", "fail", "not-measured")  # of a target
ENTRY_STATUSES = ("ok", "skipped", "error")  # of a measurement


class BenchSetupError(RuntimeError):
    """The bench cannot run as asked (e.g. --device cuda without a GPU)."""


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------ CPU memory (Linux /proc)

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident-set increase of this process from ``start()`` on, in bytes.

    The baseline is the RSS at ``start()``, with the kernel's high-water mark reset to it when
    /proc/self/clear_refs is writable; otherwise the high-water mark so far (an underestimate
    when setup peaked higher than the steps). ``method`` says which was used.
    """

    def start(self) -> "PeakRSS":
        if reset_peak_rss():
            self.base_kib, self.method = _status_kib("VmRSS"), "VmHWM - VmRSS at start (HWM reset)"
        else:
            self.base_kib, self.method = _status_kib("VmHWM"), "VmHWM after - VmHWM before"
        if self.base_kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
            import resource
            scale = 1 if sys.platform == "darwin" else 1024
            self._ru = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.base_bytes, self.method = self._ru(), "ru_maxrss after - before"
        return self

    def peak_increase(self) -> int:
        if self.base_kib is None:
            return int(self._ru() - self.base_bytes)
        return int((_status_kib("VmHWM") - self.base_kib) * 1024)


def tensor_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Peak bytes of live CPU tensors that one call of ``fn`` allocates, over the call; None
    when the profiler's allocation events are unavailable or it recorded none (never a false 0).

    The CPU analogue of ``torch.cuda.max_memory_allocated`` minus what was allocated before:
    the running sum of the PyTorch profiler's allocation and free events (``profile_memory``),
    so it counts tensors only, not the C allocator's free-but-kept heap (which peak RSS counts).
    Tensors that were allocated before the call and freed in it are not seen (the profiler has no
    event for them), so ``fn`` should not free what existed before it (call ``zero_grad`` first).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = sorted((e for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                        key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
    except AttributeError:  # the profiler's private event list changed
        return None
    return int(peak) if events else None


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that do work inside a ``with`` block: ``with OpCounter() as c: fn()``,
    then ``c.ops``. On a GPU each of them launches about one kernel, so the count shows what
    bounds a step of many small ops: launches, not arithmetic. Views, in-place view changes, bare
    allocations (``empty`` and kin) and profiler markers launch nothing and are not counted;
    autocast's casts are. Counted below autograd, so backward's ops are included and composite
    ops count as the ops they run. Approximate: some ops launch several kernels (a multi-tensor
    optimiser step, ``slice_backward``), and kernels launched outside ATen (Triton FPS, the
    pointnet2_ops / knn_cuda extensions) are not seen; on the CPU, FPS counts as one op with
    numba and as hundreds through its PyTorch loops.

    Built on ``torch.utils._python_dispatch.TorchDispatchMode`` (the mechanism of torch's public
    ``torch.utils.flop_counter.FlopCounterMode``); about 10 us of Python per op, no tensors kept.
    Under the mode PyTorch may run a few ops out of place, so measure memory in another call.
    """

    NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided",
                           "_unsafe_view", "lift_fresh", "set_"})

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or torch.Tag.inplace_view in func.tags or func.namespace == "profiler"
                or func.overloadpacket.__name__ in self.NO_KERNEL):
            self.ops += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------ environment

def random_memory_bank(model: torch.nn.Module, columns: int) -> str | None:
    """Give a model that has a memory bank (Point-PEFT) a random one: (query_dim, columns),
    unit-norm columns, from torch's global generator, as ``harness.memory_bank`` builds one from
    the training set (one column per training sample). Returns a note naming it, or None when
    the model has no bank."""
    if not hasattr(model, "set_memory_bank"):
        return None
    dim = int(getattr(model, "query_dim"))
    model.set_memory_bank(torch.nn.functional.normalize(torch.randn(dim, columns), dim=0))
    return f"random memory bank ({dim} x {columns})"


def device_name(device: str) -> str:
    """The device as reports name it: the GPU's name, or the CPU's (``cpu_name``)."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return cpu_name()


# Vector instruction sets, widest first, as /proc/cpuinfo flags name them.
VECTOR_ISA = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve", "SVE"), ("asimd", "NEON"))


def cpu_name(cpuinfo: str | None = None, logical_cpus: int | None = None) -> str:
    """``"<model name> (family F model M, <widest vector ISA>, N logical CPUs)"``, from
    /proc/cpuinfo's first processor (``cpuinfo``: its text, for tests).

    A virtual machine may show a model name without the generation ("AMD EPYC" was both an AVX2
    machine and a family-26 machine with AVX-512 that ran the same training step 2x as fast), so
    the family / model numbers and the vector ISA are part of the name: a time measured on one
    CPU is compared only with a time on a CPU of the same name. The parts /proc/cpuinfo does not
    have are left out (without it: ``platform.processor()`` and the logical CPU count only).
    """
    name, fields = platform.processor() or platform.machine(), {}
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or name
    details = []
    if fields.get("cpu family") and fields.get("model"):
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    details += [label for flag, label in VECTOR_ISA if flag in flags][:1]
    details.append(f"{os.cpu_count() if logical_cpus is None else logical_cpus} logical CPUs")
    return f"{name} ({', '.join(details)})"


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise BenchSetupError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchSetupError("--device cuda asked, but torch sees no CUDA device "
                              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")


# Environment variables that change how the process allocates memory (so its peak memory and, through
# page faults or fragmentation, its speed): PyTorch's CPU allocator (transparent huge pages for
# blocks of 2 MiB or more) and its CUDA caching allocator's options, glibc malloc's tunables, and a
# preloaded allocator (tcmalloc, jemalloc).
ALLOCATOR_ENV = ("THP_MEM_ALLOC_ENABLE", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "GLIBC_TUNABLES",
                 "LD_PRELOAD")


def allocator_env(environ=None) -> dict[str, str]:
    """{name: value} of the allocator settings in the environment (``ALLOCATOR_ENV`` and every
    ``MALLOC_*``); {} for the defaults. The bench's child processes inherit them."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k in ALLOCATOR_ENV or k.startswith("MALLOC_")}


def git_commit() -> str | None:
    """The checkout's short commit; when tracked files differ from it, "+dirty." and the first 8
    hex digits of the SHA-1 of ``git diff HEAD`` (README.md and results/ left out: the bench
    writes them), so runs of different uncommitted code do not look alike; "+dirty" alone when
    the diff cannot be read. None outside git."""
    import hashlib
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else ""
    if not commit:
        return None
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--", ".", ":(exclude)README.md",
                               ":(exclude)results"], cwd=ROOT, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return commit + "+dirty"
    if diff.returncode != 0:
        return commit + "+dirty"
    return commit + (f"+dirty.{hashlib.sha1(diff.stdout).hexdigest()[:8]}" if diff.stdout else "")


def short_error(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
