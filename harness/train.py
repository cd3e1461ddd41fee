"""One training run: ``run(cfg) -> result record``.

What a run does, in order (the official fine-tuning runners, which Point-PEFT reuses):
1. check the files it needs (one-line error before any work); return the record at once if
   the run is already done; join the process group (torchrun / submitit / single process);
2. data: official train / test splits, an optional seeded validation split carved from train;
   train loader shuffled with drop_last through a DistributedSampler (also in one process, so
   the order equals across world sizes), the global batch split across ranks;
3. model: ``build_model`` + the pre-training file (+ a fine-tuned file to continue from,
   ``load_weights``); a PEFT model gets its memory bank
   (``method_options.bank_path``, else built from the train split and saved in the run dir);
4. AdamW with the official two parameter groups, the timm cosine schedule with warm-up and
   the one-epoch lag (``harness.schedule``), L2 gradient clipping, optional label smoothing
   (official formula), bf16 / fp16 autocast on CUDA (GradScaler for fp16), torch.compile;
5. per step: FPS to point_all, one random subset shared by the batch, the augmentation; the
   loss (cross-entropy plus the method's ``auxiliary_loss()`` where it has one, e.g.
   PointLoRA's mask term) is checked for NaN / inf on every step (across ranks);
6. evaluation every ``eval_every`` epochs with deterministic FPS to npoints (test split, and the
   validation split when there is one); the optional voting protocol at the end;
7. per epoch: metrics.csv, TensorBoard scalars and an atomic checkpoint (resumed on restart);
8. the result record ``result.json``, written atomically; a failed run writes a failure record
   and re-raises.

Randomness is a pure function of (seed, epoch, rank, sample): every epoch re-seeds the
generators it uses, and each sample's point permutation is seeded by its index, so a resumed
run repeats the uninterrupted one exactly on the CPU, whatever ``num_workers`` is.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import functools
import hashlib
import io
import math
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from harness import checkpointing, distributed, runlock, tempfiles
from harness.config import (REPO, RunConfig, check_paths, config_from_dict, config_hash, resolve_path,
                            run_dir, run_id, to_dict)
from harness.schedule import EpochLR
from models import ops
from models.errors import BenchError, ConfigError

KILL_ENV = "PPB_DEBUG_KILL_AFTER_EPOCH"   # test hook: SIGKILL this process after that epoch's checkpoint
PAUSE_ENV = "PPB_DEBUG_PAUSE_AFTER_EPOCH"  # test hook: sleep 120 s after that epoch's checkpoint
PACKAGES = ("torch", "numpy", "submitit", "pyyaml", "h5py", "tqdm", "tensorboard", "pandas", "deepspeed")


class TrainingError(BenchError):
    """A run that cannot go on (non-finite loss, a bad batch configuration ...)."""


class NonFiniteLoss(TrainingError, FloatingPointError):
    pass


# ----------------------------------------------------------------------------- small helpers

def data_workers(configured: int | None) -> int:
    """DataLoader workers for ``data.num_workers``: the configured count, or for null
    min(4, usable CPUs - 1), the CPUs being those this process may run on (a SLURM job's
    ``--cpus-per-task``); 0 on one CPU. Quiet on a 2-core laptop (1 worker), 4 on a GPU node."""
    if configured is not None:
        return configured
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus - 1))


def _mix(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed()
    random.seed(s)
    np.random.seed(s % (1 << 32))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _git_commit() -> tuple[str | None, bool | None]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _packages() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def error_info(err: BaseException) -> dict:
    """{type, message, where}: where = file:line of the innermost frame inside the project."""
    where = None
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = Path(frame.filename).resolve()
        if REPO in path.parents and "site-packages" not in path.parts:
            where = f"{path.relative_to(REPO)}:{frame.lineno}"
            break
    if isinstance(err, OSError) and err.strerror:   # e.g. "no space left on device: <file>"
        message = checkpointing.os_error_text(err)
    else:
        message = str(err).strip() or type(err).__name__
    return {"type": type(err).__name__, "message": message, "where": where}


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """The official smoothed CE: 1 - eps on the target class, eps / (n - 1) on each other one."""
    if eps == 0.0:
        return F.cross_entropy(logits, target)
    n = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    one_hot = torch.zeros_like(logp).scatter_(1, target.view(-1, 1), 1.0)
    q = one_hot * (1.0 - eps) + (1.0 - one_hot) * (eps / (n - 1))
    return -(q * logp).sum(dim=1).mean()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official AdamW groups over trainable parameters: no decay for 1-D tensors, names
    ending in ``.bias`` and names containing ``token``; decay for everything else."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def adamw(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where torch has the kernel (floating-point tensors on the CPU
    or CUDA): one pass per step over all tensors instead of ~10 per tensor, 2.5x faster on the
    CPU (22M parameters: 0.27 vs 0.71 s of CPU time), the same update up to float rounding
    (~1 ulp). ``params``: tensors or param-group dicts, as for AdamW."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             fused=fused or None)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model, dynamic=False)``: how ``train.compile`` and ``bench --compile on``
    compile a model (same module, same parameters; the first call of each shape compiles).

    Static shapes: a frame that meets a new input shape (a smaller last batch, eval's batch, a
    method that runs one layer at several sizes in a forward) is compiled again for that shape,
    up to ``torch._dynamo.config.recompile_limit`` (8) per frame, after which it runs eagerly.
    torch's default instead recompiles such a frame once with symbolic sizes, and inductor
    (torch 2.13) fails on that graph for GAPrompt ("cannot determine truth value of
    Relational"); static graphs are also what CUDA graphs need.

    Guards on module hooks are switched on for the process (``torch._dynamo.config.
    skip_nnmodule_hook_guards = False``). torch skips them by default, and then a frame compiled
    for one model runs a later model of the same classes and shapes as if it had the first one's
    hooks: a compiled SSF or DAPT model (scale and shift in forward hooks) after a linear probe
    in one process ran without its scale and shift, with no error."""
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    return torch.compile(model, dynamic=False)


def param_group_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(no-decay names, decay names) with the rule of ``param_groups``."""
    nd, d = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (nd if p.ndim <= 1 or name.endswith(".bias") or "token" in name else d).append(name)
    return nd, d


# ----------------------------------------------------------------------------- data

class SeededItems(Dataset):
    """Each item drawn with torch's RNG seeded by (seed, epoch, index): the per-access random
    point order of the official train split, independent of workers, ranks and resumption."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, "item", self.epoch, int(index)))
            return self.base[index]


def _build_splits(cfg: RunConfig, info: distributed.DistInfo, progress: bool, log=None):
    from harness.data import build_dataset
    from harness.data.base import PointCloudDataset

    d = cfg.data
    root = resolve_path(d.root)
    opts: dict = {"permute": d.permute_train}
    test_opts: dict = {"permute": False}
    if d.dataset == "modelnet40":
        # a missing .dat cache is built here (minutes on the real data): a bar on a terminal,
        # and progress lines in the run's log either way
        extra = {"use_normals": d.use_normals, "progress": progress and info.is_main,
                 "log": log if info.is_main else None}
        opts.update(extra)
        test_opts.update(extra)

    def build():
        return build_dataset(d.dataset, root, "train", **opts), build_dataset(d.dataset, root, "test", **test_opts)

    if info.distributed:  # rank 0 first (it may build a cache), then the others read it
        if info.is_main:
            train, test = build()
        distributed.barrier(info)
        if not info.is_main:
            train, test = build()
    else:
        train, test = build()

    val = None
    if d.val_fraction > 0:
        n = len(train)
        n_val = int(round(d.val_fraction * n))
        if n_val < 1 or n_val >= n:
            raise ConfigError(f"data.val_fraction: {d.val_fraction} of {n} train samples leaves "
                              f"{n_val} for validation and {n - n_val} for training")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(cfg.train.seed, "val-split")))
        val_idx, train_idx = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
        fixed = PointCloudDataset(train.points, train.labels, train.class_names, False, train.name, "val")
        val = Subset(fixed, val_idx)
        train = Subset(train, train_idx)
    return train, val, test


def _fixed_view(ds: Dataset) -> Dataset:
    """The same samples in their stored point order (no per-access permutation)."""
    from harness.data.base import PointCloudDataset

    if isinstance(ds, SeededItems):
        return _fixed_view(ds.base)
    if isinstance(ds, Subset):
        return Subset(_fixed_view(ds.dataset), ds.indices)
    if isinstance(ds, PointCloudDataset) and ds.permute:
        return PointCloudDataset(ds.points, ds.labels, ds.class_names, False, ds.name, ds.split)
    return ds


def _shard(ds: Dataset, info: distributed.DistInfo) -> Dataset:
    """Every world_size-th item from this rank's offset, no padding (exact counts)."""
    if not info.distributed:
        return ds
    return Subset(ds, list(range(info.rank, len(ds), info.world_size)))


# ----------------------------------------------------------------------------- model pieces

def _set_train_mode(net: nn.Module, cfg: RunConfig) -> None:
    net.train()
    if cfg.train.freeze_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _disable_dropout(net: nn.Module) -> int:
    n = 0
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
            n += 1
        elif hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
            n += 1
    return n


def _build_model(cfg: RunConfig, num_classes: int, family: str):
    from models.classifier import build_model

    options = dict(cfg.model.method_options)
    options.pop("bank_path", None)  # the harness's key, not the method's
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    backbone_options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model.backbone_options.items()}
    return build_model(cfg.model.backbone, num_classes, method=cfg.model.method, family=family,
                       method_options=options, **backbone_options)


def load_weights(cfg: RunConfig, net: nn.Module, log) -> tuple[str, dict]:
    """``model.pretrained`` (backbone init and, for Point-PEFT, the frozen query encoder, always
    from this file), then ``model.finetuned`` (strict: every model tensor from the file; the
    query encoder is left as the pre-training file made it).

    Returns the identity of the frozen weights (the pre-training file's sha256, or
    "random-init:seed=S") and {"pretrained" / "finetuned": {path, sha256, ...}} for the record.
    """
    from harness.fingerprint import MISSING, weights_sha256
    from models.checkpoints import CheckpointError, load_checkpoint

    peft = callable(getattr(net, "reset_query_encoder", None))
    m = cfg.model
    if m.finetuned is not None and peft and m.pretrained is None:
        raise ConfigError("model.finetuned: a Point-PEFT model also needs model.pretrained, the backbone's "
                          "pre-training file (its frozen query encoder is built from that file)")
    backbone_id, files = f"random-init:seed={cfg.train.seed}", {}
    if m.pretrained is None:
        log("WARNING: no pre-trained checkpoint (model.pretrained is null): the backbone starts from "
            "random weights; this run is a pipeline check, not comparable to the paper")
    else:
        path = resolve_path(m.pretrained)
        backbone_id = weights_sha256(path)
        if m.pretrained_sha256 not in (None, MISSING, backbone_id):
            raise CheckpointError(f"model.pretrained: {path} changed since this run was configured (sha256 "
                                  f"{m.pretrained_sha256[:12]}, now {backbone_id[:12]}): re-submit to make a new run")
        report = load_checkpoint(net, path, m.backbone, kind=m.pretrained_kind, allow_missing=m.allow_missing)
        log(report.summary())
        files["pretrained"] = {"path": str(path), "sha256": backbone_id, "kind": report.kind,
                               "loaded": len(report.loaded), "missing": len(report.missing),
                               "skipped": len(report.skipped)}
        if peft:
            net.reset_query_encoder(sha256=backbone_id, checkpoint=str(path))
    if m.finetuned is not None:
        path = resolve_path(m.finetuned)
        report = load_checkpoint(net, path, m.backbone, kind="finetune", allow_missing=m.allow_missing,
                                 base_sha256=files.get("pretrained", {}).get("sha256"))
        log(report.summary())
        files["finetuned"] = {"path": str(path), "sha256": weights_sha256(path), "file": report.found.describe(),
                              "loaded": len(report.loaded)}
    return backbone_id, files


def _needs_bank(net: nn.Module) -> bool:
    return callable(getattr(net, "set_memory_bank", None)) and callable(getattr(net, "query_features", None))


def _fps_collate(batch, npoints: int):
    """Collate, then FPS each cloud to npoints (the evaluation input)."""
    from torch.utils.data import default_collate

    from harness.data.transforms import fps_points

    pts, labels = default_collate(batch)
    return fps_points(pts, npoints), labels


def _prepare_memory_bank(cfg: RunConfig, net: nn.Module, train_ds: Dataset, rdir: Path,
                         info: distributed.DistInfo, device: torch.device, progress: bool,
                         log) -> dict | None:
    """A PEFT model's bank: ``method_options.bank_path``, else the run's own ``memory_bank.pt``,
    else built by rank 0 from the train split (no shuffle; every sample, or the official
    drop_last in faithful mode: ``harness.memory_bank.bank_drop_last``) and saved there."""
    if not _needs_bank(net):
        return None
    from harness.memory_bank import (bank_drop_last, build_memory_bank, load_memory_bank, read_memory_bank,
                                     save_memory_bank)

    from harness.memory_bank import bank_record

    given = cfg.model.method_options.get("bank_path")
    path = resolve_path(given) if given else rdir / "memory_bank.pt"
    if not given and not path.is_file():
        if info.is_main:
            drop = bank_drop_last(net)
            loader = DataLoader(_fixed_view(train_ds), batch_size=cfg.train.batch_size, shuffle=False,
                                drop_last=drop, num_workers=data_workers(cfg.data.num_workers),
                                collate_fn=functools.partial(_fps_collate, npoints=cfg.data.npoints))
            count = len(loader) * cfg.train.batch_size if drop else len(loader.dataset)
            log(f"building the memory bank from {count} of {len(loader.dataset)} train samples"
                f"{' (faithful mode: the official drop_last)' if drop else ''} -> {path}")
            was_training = net.training
            net.eval()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_mix(cfg.train.seed, "bank") % (1 << 31))
                built = build_memory_bank(net, loader, device, progress=progress, normalize=True,
                                          dataset=cfg.data.dataset, split="train")
            net.train(was_training)
            built["meta"]["npoints"] = cfg.data.npoints
            save_memory_bank(path, built)
        distributed.barrier(info)
    load_memory_bank(path, net, expect={"dataset": cfg.data.dataset})
    return bank_record(path, read_memory_bank(path))


# ----------------------------------------------------------------------------- the run

class _Run:
    def __init__(self, cfg: RunConfig, info: distributed.DistInfo):
        self.cfg, self.info = cfg, info
        self.device = info.device
        self.rid = run_id(cfg)
        self.hash = config_hash(cfg)
        self.rdir = run_dir(cfg)
        self.progress = (cfg.output.progress if cfg.output.progress is not None else sys.stderr.isatty()) \
            and info.is_main
        self.notes: list[str] = []
        self.history: list[dict] = []
        self.best = {"acc_best_test": None, "best_test_epoch": None, "acc_best_val": None,
                     "best_val_epoch": None, "val_at_best": None}
        self.train_samples = 0
        self.train_seconds = 0.0
        self.global_step = 0
        self.started = False
        # compute time and peak memory over every segment of a resumed run (kept in checkpoints)
        self.segment_start = time.perf_counter()
        self.prior_compute_s, self.prior_peak, self.segments = 0.0, 0, 1

    def log(self, msg: str) -> None:
        if self.info.is_main:
            print(f"[{self.rid}] {msg}", flush=True)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.log(f"note: {msg}")

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        from harness.catalog import dataset_info

        ds_info = dataset_info(cfg.data.dataset)
        if cfg.train.batch_size % info.world_size:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split over "
                              f"{info.world_size} processes")
        self.local_bs = cfg.train.batch_size // info.world_size
        self.local_eval_bs = max(1, -(-cfg.train.eval_batch_size // info.world_size))
        if cfg.train.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
            # reproducibility does not need torch.empty filled with NaN (a debugging aid that
            # deterministic mode turns on; about 13% of a Point-PEFT CPU step)
            torch.utils.deterministic.fill_uninitialized_memory = False
        if info.is_main:
            self.rdir.mkdir(parents=True, exist_ok=True)

        # data
        train, val, test = _build_splits(cfg, info, self.progress, self.log)
        self.train_ds = SeededItems(train, cfg.train.seed)
        self.n_train, self.n_test = len(train), len(test)
        self.n_val = len(val) if val is not None else 0
        self.class_counts = {"train": _class_counts(train, ds_info.num_classes),
                             "test": _class_counts(test, ds_info.num_classes)}
        self.sampler = DistributedSampler(self.train_ds, num_replicas=info.world_size, rank=info.rank,
                                          shuffle=True, seed=cfg.train.seed, drop_last=True)
        self.loader_gen = torch.Generator()
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(self.train_ds, batch_size=self.local_bs, sampler=self.sampler,
                                       drop_last=True, num_workers=data_workers(cfg.data.num_workers), pin_memory=pin,
                                       worker_init_fn=_worker_init, generator=self.loader_gen)
        if len(self.train_loader) == 0:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is more than the "
                              f"{self.n_train} train samples (drop_last leaves no batch)")

        def eval_loader(ds):
            return DataLoader(_shard(ds, info), batch_size=self.local_eval_bs, shuffle=False,
                              num_workers=data_workers(cfg.data.num_workers), pin_memory=pin, worker_init_fn=_worker_init)
        self.test_loader = eval_loader(test)
        self.val_loader = eval_loader(val) if val is not None else None
        sample_n = test.points.shape[1] if hasattr(test, "points") else cfg.data.point_all
        self.cloud_points = int(sample_n)
        self.point_all = min(cfg.data.point_all, self.cloud_points)
        if cfg.data.npoints > self.cloud_points:
            raise ConfigError(f"data.npoints: {cfg.data.npoints} is more than the {self.cloud_points} "
                              f"points per cloud of {cfg.data.dataset}")

        # which FPS / kNN implementation runs (a broken CUDA extension is found and reported now)
        self.kernels = ops.probe_kernels(self.device)

        # model (same init on every rank)
        seed_everything(_mix(cfg.train.seed, "init") % (1 << 31))
        net = _build_model(cfg, ds_info.num_classes, ds_info.family)
        self.backbone_id, self.weight_files = load_weights(cfg, net, self.log)
        net.to(self.device)
        if cfg.train.disable_dropout:
            self.note(f"train.disable_dropout: {_disable_dropout(net)} dropout / drop-path modules off")
        self.bank_info = _prepare_memory_bank(cfg, net, self.train_ds, self.rdir, info, self.device,
                                              self.progress, self.log)
        from harness.params import count_params, count_with_grad

        counts = count_params(net)
        with_grad = count_with_grad(net, cfg.data.npoints)
        self.params = {"total": counts.total, "trainable": counts.trainable, "with_grad": with_grad}
        self.partial = cfg.model.method != "full"
        _set_train_mode(net, cfg)
        self.buffer_names = checkpointing.trained_buffer_names(net)
        self.net = net

        # optimisation
        o = cfg.optim
        self.optimizer = adamw(param_groups(net, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
        self.scheduler = EpochLR(self.optimizer, o.lr, cfg.schedule)
        amp = cfg.train.amp
        if amp != "none" and self.device.type != "cuda":
            self.note(f"train.amp={amp} needs CUDA; this run is float32 on {self.device.type}")
            amp = "none"
        self.amp = amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))

        fwd: nn.Module = net
        if cfg.train.compile:
            fwd = compile_model(fwd)
        self.engine = None
        if cfg.train.engine == "deepspeed":
            self._setup_deepspeed(net)
            fwd = self.engine
        elif info.distributed:
            unused = with_grad < counts.trainable
            fwd = nn.parallel.DistributedDataParallel(
                fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused)
        self.fwd = fwd

    def _setup_deepspeed(self, net: nn.Module) -> None:
        try:
            import deepspeed
        except ImportError:
            raise ConfigError("train.engine: deepspeed is not installed "
                              "(pip install --no-build-isolation deepspeed, or use engine: ddp)") from None
        cfg = self.cfg
        ds_config = {
            "train_batch_size": cfg.train.batch_size,
            "train_micro_batch_size_per_gpu": self.local_bs,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.optim.grad_clip or 0.0,
            "zero_optimization": {"stage": cfg.train.zero_stage},
            "bf16": {"enabled": self.amp == "bf16"},
            "fp16": {"enabled": self.amp == "fp16"},
            "steps_per_print": 1 << 30,
        }
        if not self.info.distributed and "RANK" not in os.environ:
            # one process: give DeepSpeed a torchrun-style environment (else it tries MPI)
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port))
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=net, optimizer=self.optimizer, config=ds_config)
        self.scheduler = EpochLR(self.optimizer, cfg.optim.lr, cfg.schedule)

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.rdir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.rdir / "best_test.pt"

    def _weights(self) -> dict:
        return {"model": checkpointing.model_state(self.net, self.partial, self.buffer_names),
                "partial": self.partial, "backbone_id": self.backbone_id}

    def save_checkpoint(self, epoch: int) -> None:
        if self.engine is not None:   # DeepSpeed shards optimizer state itself (all ranks call)
            self.engine.save_checkpoint(str(self.rdir / "deepspeed"), tag="last")
        if not self.info.is_main:
            return
        state = {
            "format": checkpointing.FORMAT, "run_id": self.rid, "config_hash": self.hash, "epoch": epoch,
            **self._weights(),
            "optimizer": None if self.engine is not None else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": checkpointing.rng_state(), "history": self.history, "best": self.best,
            "train_samples": self.train_samples, "train_seconds": self.train_seconds,
            "global_step": self.global_step, **self.cost(),
        }
        checkpointing.save_atomic(state, self.ckpt_path)

    def _check_weights(self, state: dict, path: Path) -> None:
        from models.errors import CheckpointError

        if state.get("backbone_id") != self.backbone_id:
            raise CheckpointError(f"{path}: made on backbone weights {state.get('backbone_id')}, "
                                  f"this run has {self.backbone_id}")

    def try_resume(self) -> int:
        """Restore the last checkpoint if there is one; returns the first epoch to run."""
        if not self.ckpt_path.is_file():
            return 0
        state = checkpointing.load(self.ckpt_path)
        from models.errors import CheckpointError
        needed = ["config_hash", "epoch", "model", "partial", "scheduler", "scaler", "rng", "history",
                  "best", "train_samples", "train_seconds", "global_step"]
        if self.engine is None:
            needed.append("optimizer")
        missing = [k for k in needed if k not in state or (k == "optimizer" and not isinstance(state[k], dict))]
        if missing:
            raise CheckpointError(f"{self.ckpt_path}: lacks {', '.join(missing)} (written by another version "
                                  f"or tool?); delete it (rm {self.ckpt_path}) to restart the run from epoch 0")
        if state["config_hash"] != self.hash:
            raise CheckpointError(f"{self.ckpt_path}: belongs to config {state['config_hash'][:10]}, "
                                  f"not {self.hash[:10]} (delete the run folder to start over)")
        self._check_weights(state, self.ckpt_path)
        checkpointing.load_model_state(self.net, state["model"], state["partial"], str(self.ckpt_path))
        if self.engine is not None:
            self.engine.load_checkpoint(str(self.rdir / "deepspeed"), tag="last")
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        checkpointing.set_rng_state(state["rng"])
        self.history, self.best = state["history"], state["best"]
        self.train_samples, self.train_seconds = state["train_samples"], state["train_seconds"]
        self.global_step = state["global_step"]
        self.log(f"resumed from {self.ckpt_path} after epoch {state['epoch']}")
        self.resumed_from = state["epoch"]
        self.prior_compute_s = state.get("compute_time_s", 0.0)
        self.prior_peak = state.get("peak_memory_bytes", 0)
        self.segments = state.get("segments", 1) + 1
        return state["epoch"] + 1

    # ---------------------------------------------------------------- steps
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _augment(self, pts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from harness.data.transforms import rotate_y, scale_and_rotate_y, scale_and_translate

        aug = self.cfg.train.augmentation
        if aug == "scale_translate":
            return scale_and_translate(pts, generator=gen)
        if aug == "aug_rotate_y":
            return scale_and_rotate_y(pts, generator=gen)
        if aug == "rotate_y":
            return rotate_y(pts, generator=gen)
        if aug == "rotate_y_batch":
            return rotate_y(pts, generator=gen, per_sample=False, low=-math.pi, high=math.pi)
        return pts

    def train_epoch(self, epoch: int) -> dict:
        from harness.data.transforms import sample_points

        cfg, info = self.cfg, self.info
        lr = self.scheduler.set_epoch(epoch)
        seed = cfg.train.seed
        seed_everything(_mix(seed, "epoch", epoch, info.rank) % (1 << 31))
        subset_gen = torch.Generator().manual_seed(_mix(seed, "subset", epoch))          # shared by ranks
        aug_gen = torch.Generator().manual_seed(_mix(seed, "aug", epoch, info.rank))
        self.loader_gen.manual_seed(_mix(seed, "workers", epoch, info.rank))
        self.sampler.set_epoch(epoch)
        self.train_ds.epoch = epoch
        _set_train_mode(self.net, cfg)
        if self.engine is not None:
            self.engine.train()
            _set_train_mode(self.net, cfg)

        steps = len(self.train_loader)
        if cfg.train.max_steps_per_epoch is not None:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="batch", leave=False, file=sys.stderr)
        start = time.perf_counter()
        for step, (pts, labels) in enumerate(self.train_loader):
            if step >= steps:
                break
            pts = pts.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            pts = sample_points(pts, cfg.data.npoints, self.point_all, generator=subset_gen)
            pts = self._augment(pts, aug_gen)
            with self._autocast():
                logits = self.fwd(pts)
            loss = smoothed_cross_entropy(logits.float(), labels, cfg.train.label_smoothing)
            aux = self.auxiliary_loss()
            if aux is not None:
                loss = loss + aux.float()
            if cfg.debug.nan_loss_at_step is not None and self.global_step == cfg.debug.nan_loss_at_step:
                loss = loss * float("nan")
            check = loss.detach().reshape(1).double()
            distributed.all_reduce_sum(check, info)
            if not torch.isfinite(check).all():
                raise NonFiniteLoss(f"non-finite training loss ({check.item() / info.world_size}) at epoch "
                                    f"{epoch}, step {step} (global step {self.global_step}), lr {lr:.3g}")
            self._backward_step(loss)
            n = labels.shape[0]
            totals += torch.tensor([loss.item() * n, (logits.argmax(1) == labels).sum().item(), n],
                                   dtype=torch.float64, device=self.device)
            self.global_step += 1
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                bar.update(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        distributed.all_reduce_sum(totals, info)
        loss_sum, correct, count = totals.tolist()
        self.train_samples += int(count)
        self.train_seconds += seconds
        return {"epoch": epoch, "lr": lr, "train_loss": loss_sum / max(count, 1),
                "train_acc": 100.0 * correct / max(count, 1), "train_samples": int(count),
                "epoch_time_s": seconds, "samples_per_s": count / seconds if seconds > 0 else None}

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A method's extra loss term of the last training forward (PointLoRA's mask term), from
        the model's ``auxiliary_loss()`` when it has one."""
        get = getattr(self.net, "auxiliary_loss", None)
        return get() if callable(get) else None

    def _backward_step(self, loss: torch.Tensor) -> None:
        clip = self.cfg.optim.grad_clip
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
            return
        self.scaler.scale(loss).backward()
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def cost(self) -> dict:
        """Compute time (s) and peak memory (bytes) summed / maxed over all segments so far."""
        return {"compute_time_s": self.prior_compute_s + time.perf_counter() - self.segment_start,
                "peak_memory_bytes": max(self.prior_peak, _peak_memory(self.device)), "segments": self.segments}

    @torch.no_grad()
    def evaluate(self, loader) -> float:
        """Accuracy (%) with deterministic FPS to npoints, no augmentation."""
        from harness.evaluate import accuracy_counts, percent

        counts = accuracy_counts(self.net, loader, self.cfg.data.npoints, self.device, self._autocast)
        distributed.all_reduce_sum(counts, self.info)
        _set_train_mode(self.net, self.cfg)
        return percent(counts)

    @torch.no_grad()
    def vote(self, loader) -> float:
        """The official voting (``harness.evaluate.vote_counts``), the whole pass repeated
        `repeats` times and the best accuracy kept."""
        from harness.evaluate import percent, vote_counts

        v = self.cfg.train.vote
        best = 0.0
        for r in range(v.repeats):
            gen = torch.Generator().manual_seed(_mix(self.cfg.train.seed, "vote", r, self.info.rank))
            counts = vote_counts(self.net, loader, self.cfg.data.npoints, self.point_all, v.votes, gen,
                                 self.device, self._autocast)
            distributed.all_reduce_sum(counts, self.info)
            best = max(best, percent(counts))
        _set_train_mode(self.net, self.cfg)
        return best

    # ---------------------------------------------------------------- outputs
    def write_metrics(self) -> None:
        if not self.info.is_main or not self.history:
            return
        from harness.results import write_bytes_atomic

        fields = ["epoch", "lr", "train_loss", "train_acc", "test_acc", "val_acc", "train_samples",
                  "epoch_time_s", "samples_per_s"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_bytes_atomic(self.rdir / "metrics.csv", buf.getvalue().encode())

    def open_tensorboard(self, start_epoch: int):
        wanted = self.cfg.output.tensorboard   # null: when tensorboard is installed, silently off otherwise
        if not self.info.is_main or wanted is False:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard not installed or broken
            if wanted:
                self.note("tensorboard is not importable: no TensorBoard events written "
                          "(pip install tensorboard, or set output.tensorboard: null)")
            return None
        return SummaryWriter(str(self.rdir / "tb"), purge_step=start_epoch if start_epoch else None)

    # ---------------------------------------------------------------- main loop
    def fit(self) -> dict:
        cfg = self.cfg
        start_epoch = self.try_resume()
        self.started = True   # from here on a failure is the run's (a failure record), not the input's
        if self.info.is_main:   # a failure record of an earlier attempt: this attempt replaces it
            (self.rdir / "result.json").unlink(missing_ok=True)
        tb = self.open_tensorboard(start_epoch)
        epochs = cfg.schedule.epochs
        try:
            for epoch in range(start_epoch, epochs):
                row = self.train_epoch(epoch)
                last = epoch == epochs - 1
                if last or (epoch >= cfg.train.eval_start and epoch % cfg.train.eval_every == 0):
                    row["test_acc"] = self.evaluate(self.test_loader)
                    if self.val_loader is not None:
                        row["val_acc"] = self.evaluate(self.val_loader)
                    self._update_best(epoch, row)
                self.history.append(row)
                self.log(self._summary(row))
                self.write_metrics()
                if tb is not None:
                    for key in ("lr", "train_loss", "train_acc", "test_acc", "val_acc", "samples_per_s"):
                        if row.get(key) is not None:
                            tb.add_scalar(key, row[key], epoch)
                    tb.flush()
                self.save_checkpoint(epoch)
                distributed.barrier(self.info)
                if os.environ.get(KILL_ENV) == str(epoch):
                    os.kill(os.getpid(), signal.SIGKILL)
                if os.environ.get(PAUSE_ENV) == str(epoch):
                    time.sleep(120)  # so a test can kill the job mid-run, however fast its epochs are
        finally:
            if tb is not None:
                tb.close()
        acc_vote = None
        if cfg.train.vote.enabled:
            if cfg.train.vote.weights == "best_test" and self.best_path.is_file():
                best = checkpointing.load(self.best_path, "best weights")
                self._check_weights(best, self.best_path)
                checkpointing.load_model_state(self.net, best["model"], best["partial"], str(self.best_path))
            elif cfg.train.vote.weights == "best_test":
                self.note("no best-test weights kept (output.keep_best false?): voting on the last weights")
            acc_vote = self.vote(self.test_loader)
            self.log(f"vote ({cfg.train.vote.votes} votes x {cfg.train.vote.repeats} repeats, "
                     f"{cfg.train.vote.weights} weights): {acc_vote:.2f}")
        last_acc = self.history[-1].get("test_acc") if self.history else None
        return {"acc_last": last_acc, "acc_best_test": self.best["acc_best_test"],
                "best_test_epoch": self.best["best_test_epoch"], "acc_best_val": self.best["acc_best_val"],
                "best_val_epoch": self.best["best_val_epoch"], "acc_vote": acc_vote}

    def _update_best(self, epoch: int, row: dict) -> None:
        acc = row["test_acc"]
        if self.best["acc_best_test"] is None or acc > self.best["acc_best_test"]:   # strict, as official
            self.best["acc_best_test"], self.best["best_test_epoch"] = acc, epoch
            if self.cfg.output.keep_best and self.info.is_main:
                checkpointing.save_atomic({"format": checkpointing.FORMAT, "epoch": epoch, "test_acc": acc,
                                           **self._weights()}, self.best_path)
        val = row.get("val_acc")
        if val is not None and (self.best["val_at_best"] is None or val > self.best["val_at_best"]):
            self.best["val_at_best"], self.best["best_val_epoch"] = val, epoch
            self.best["acc_best_val"] = acc   # the test accuracy at the best validation epoch

    @staticmethod
    def _summary(row: dict) -> str:
        parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.3e}", f"loss {row['train_loss']:.4f}",
                 f"train {row['train_acc']:.2f}%"]
        if row.get("test_acc") is not None:
            parts.append(f"test {row['test_acc']:.2f}%")
        if row.get("val_acc") is not None:
            parts.append(f"val {row['val_acc']:.2f}%")
        if row.get("samples_per_s"):
            parts.append(f"{row['samples_per_s']:.1f} samples/s")
        if row.get("epoch_time_s") is not None:
            parts.append(f"{row['epoch_time_s']:.1f} s")
        return ", ".join(parts)


# ----------------------------------------------------------------------------- records

def _base_record(cfg: RunConfig, start_time: str) -> dict:
    from harness.matrix import setup_id

    sha, dirty = _git_commit()
    return {
        "schema": 2, "run_id": run_id(cfg), "setup_id": setup_id(cfg), "status": None,
        "experiment": cfg.experiment or None,
        "backbone": cfg.model.backbone, "method": cfg.model.method, "dataset": cfg.data.dataset,
        "variant": cfg.record_variant, "data_source": "synthetic" if cfg.data.synthetic else "official",
        "seed": cfg.train.seed, "metrics": None, "params": None, "epochs": None, "wall_time_s": None,
        "train_samples_per_s": None, "peak_memory_bytes": None, "device": None, "world_size": None,
        "git_commit": sha, "git_dirty": dirty, "packages": _packages(), "config": to_dict(cfg),
        "config_hash": config_hash(cfg), "start_time": start_time, "end_time": None, "error": None,
    }


def result_path(cfg: RunConfig) -> Path:
    return run_dir(cfg) / "result.json"


def read_done_record(cfg: RunConfig) -> dict | None:
    """The run's record when it finished with this exact config, else None."""
    import json

    path = result_path(cfg)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "done" and record.get("config_hash") == config_hash(cfg):
        return record
    return None


def _class_counts(ds: Dataset, num_classes: int) -> list[int]:
    """Samples per class of a split (a Subset counts its own indices)."""
    if isinstance(ds, Subset):
        labels = torch.as_tensor(_fixed_view(ds.dataset).labels)[torch.as_tensor(ds.indices, dtype=torch.long)]
    else:
        labels = torch.as_tensor(_fixed_view(ds).labels)
    return torch.bincount(labels.reshape(-1).long(), minlength=num_classes).tolist()


def check_data_identity(cfg: RunConfig) -> str:
    """The data's fingerprint now; a ConfigError when it differs from the configured one."""
    from harness.fingerprint import MISSING, data_fingerprint

    now = data_fingerprint(resolve_path(cfg.data.root))
    if cfg.data.fingerprint not in (None, MISSING, now):
        raise ConfigError(f"data.root: the files in {resolve_path(cfg.data.root)} changed since this run was "
                          f"configured (fingerprint {cfg.data.fingerprint}, now {now}): re-submit to make a new run")
    return now


def check_engine(cfg: RunConfig) -> None:
    """DeepSpeed asked for but not installed: one line, before any work."""
    import importlib.util

    if cfg.train.engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("train.engine: deepspeed is not installed (pip install --no-build-isolation "
                          "deepspeed, or set train.engine: ddp)")


def check_device(device: str | None) -> None:
    """``--device``: a torch device this machine has (one line otherwise, before any work)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r}: not a torch device; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here (torch {torch.__version__}"
                              f"{'' if torch.version.cuda else ', a CPU-only build'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ConfigError(f"--device {device}: device type {dev.type!r} is not available here; "
                              "expected cpu, cuda or cuda:N")


def _main_by_env() -> bool:
    """Rank 0 of the launch (torchrun RANK, submitit / srun SLURM_PROCID), before the group exists."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _input_error(err: BaseException) -> BaseException:
    """Mark a BenchError raised before training started: nothing was run, no record is written."""
    err.nothing_run = True
    return err


def run(cfg: RunConfig, device: str | None = None) -> dict:
    """Train and evaluate one run; returns its result record (written to result.json on rank 0).

    A finished run (a done record with the same config hash) is returned without training; an
    interrupted one resumes from its checkpoint. Rank 0 holds the run's lock (``run.lock``) while
    it trains, so two processes never train one run at once (``harness.runlock``). A config,
    data or checkpoint problem found before the first epoch starts is re-raised with
    ``nothing_run = True`` and leaves no record; any later exception writes a failure record
    (rank 0) and is re-raised.
    """
    try:                        # one-line errors before any work
        check_paths(cfg)
        check_engine(cfg)
        check_device(device)
        fingerprint = check_data_identity(cfg)
    except BenchError as err:
        raise _input_error(err) from None
    done = read_done_record(cfg)
    if done is not None:
        print(f"[{done['run_id']}] already done: {result_path(cfg)}", flush=True)
        return done
    rdir = run_dir(cfg)
    lock = runlock.RunLock(rdir, run_id(cfg)) if _main_by_env() else None
    existed = rdir.is_dir()
    try:
        if lock is not None:
            try:
                lock.acquire()
            except OSError as err:
                raise _input_error(ConfigError(f"output.runs_dir: cannot create the run folder {rdir}: "
                                               f"{checkpointing.os_error_text(err)}")) from None
            except runlock.RunLocked as err:
                raise _input_error(err) from None
            tempfiles.sweep_stale(rdir, whole_folder=True)   # left by a killed earlier attempt
        return _run_locked(cfg, device, fingerprint)
    finally:
        if lock is not None:
            lock.release()
        if not existed:   # a run that never started leaves no empty folder behind
            with contextlib.suppress(OSError):
                rdir.rmdir()


def _run_locked(cfg: RunConfig, device: str | None, fingerprint) -> dict:
    start_time, t0 = _now(), time.perf_counter()
    info = distributed.setup(device)
    record = _base_record(cfg, start_time)
    record["world_size"], record["device"] = info.world_size, None
    state = None
    try:
        state = _Run(cfg, info)
        record["device"] = _device_name(info.device)
        state.log(f"run dir {state.rdir}; {info.world_size} process(es) on {info.device}")
        state.setup()
        record["params"] = state.params
        metrics = state.fit()
        record.update(
            status="done", metrics=metrics, epochs=len(state.history),
            train_samples_per_s=(state.train_samples / state.train_seconds) if state.train_seconds else None,
            notes=state.notes or None,
            data={"train": state.n_train, "val": state.n_val, "test": state.n_test,
                  "npoints": cfg.data.npoints, "point_all": state.point_all, "fingerprint": fingerprint,
                  "num_classes": len(state.class_counts["test"]), "class_counts": state.class_counts},
            pretrained=state.weight_files.get("pretrained"),
            seconds_per_epoch=(sum(r["epoch_time_s"] for r in state.history) / len(state.history)
                               if state.history else None),
            amp=state.amp,
            resumed_from_epoch=getattr(state, "resumed_from", None),
            memory_bank=state.bank_info,
            finetuned=state.weight_files.get("finetuned"),
            kernels=state.kernels,
        )
    except BaseException as err:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            # interrupted, not failed (Ctrl-C, or submitit's exit after a preemption or timeout
            # signal): the checkpoint is there to resume from
            distributed.teardown(info)
            raise
        if isinstance(err, BenchError) and not (state is not None and state.started):
            distributed.teardown(info)
            raise _input_error(err)   # the input's fault, found before training: nothing was run
        record.update(status="failed", error=error_info(err),
                      epochs=len(state.history) if state is not None else 0, kernels=ops.kernels_used(info.device))
        _finish(record, info, t0, state)
        distributed.teardown(info)
        raise
    _finish(record, info, t0, state)
    distributed.teardown(info)
    return record


def _finish(record: dict, info: distributed.DistInfo, t0: float, state=None) -> None:
    from harness.results import write_record

    record["end_time"] = _now()
    record["wall_time_s"] = time.perf_counter() - t0      # this segment (process) only
    record["peak_memory_bytes"] = _peak_memory(info.device)
    if state is not None and hasattr(state, "segment_start"):
        record.update(state.cost())                       # summed / maxed over resumed segments
        if info.device.type == "cuda":
            record["gpu_hours"] = record["compute_time_s"] * info.world_size / 3600
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    if info.is_main:
        path = resolve_path(record["config"]["output"]["runs_dir"]) / record["run_id"] / "result.json"
        write_record(path, record)


def run_from_spec(spec: dict) -> dict:
    """Entry point of a launched job: ``{"run_id", "config": resolved config dict, ...}``."""
    cfg = config_from_dict(spec["config"])
    rid = run_id(cfg)
    if spec.get("run_id") not in (None, rid):
        raise ConfigError(f"job spec run_id {spec['run_id']} does not match its config ({rid}): "
                          "the config code changed since submission")
    return run(cfg)
