"""``run_all.py eval``: evaluate a fine-tuned checkpoint (the authors' or a run's) on a split."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Evaluate one fine-tuned checkpoint on a dataset split: no training step, no optimiser.
Prints the accuracy (and, with --vote, the voting accuracy) beside the majority-class
baseline of the split, and writes an eval record (kind "eval": the checkpoint's sha256, the
pre-training file's, the memory bank's, and the data fingerprint) to
<evals-dir>/<backbone>-<method>-<dataset>-<split>-<sha256[:12]>[-voteN].json, which
`run_all.py tables` shows in its "Released checkpoints" section beside the paper's number.

Point-PEFT needs three files (the authors' README links them): the fine-tuned model
(--checkpoint, ckpt-best.pth), the backbone's pre-training file (--pretrained, pretrain.pth /
pre-train.pth: the frozen query encoder is always built from it) and the memory bank (--bank,
cache_shape.pt: the official bare (384, M) tensor, or a bank of build-cache). A full
fine-tuned file needs only --checkpoint. Every load is strict; a file of the wrong kind is one
line saying what the file looks like (check a download first with `run_all.py ckpt inspect`).

--method defaults to what the checkpoint is: the authors' Point-PEFT files were trained with
the official numerics, so they get point_peft_faithful; project files get point_peft (give
--method and --option for the mode they were trained with); a full fine-tuned file gets full.

Either a config (the model / data sections of a train config; model.finetuned is the
checkpoint) or flags; flags given with a config override it.

Exit status: 0 evaluated, 2 a bad argument or file (nothing evaluated).

examples:
  python run_all.py eval --backbone point_mae --dataset scanobjectnn_pb_t50_rs --root data/h5_files \\
      --checkpoint ckpts/ckpt-best.pth --pretrained ckpts/pretrain.pth --bank ckpts/cache_shape.pt
  python run_all.py eval --backbone point_m2ae --dataset scanobjectnn_pb_t50_rs --root data/h5_files \\
      --checkpoint ckpts/ckpt-best.pth --pretrained ckpts/pre-train.pth --bank ckpts/cache_shape.pt --vote 10
  python run_all.py eval experiments/recipes/point_peft.yaml --set model.finetuned=results/runs/RUN/best_test.pt"""


def register(sub: argparse._SubParsersAction) -> None:
    from harness.config import REPO
    from harness.catalog import DATASETS
    from models.classifier import BACKBONES, METHODS

    p = sub.add_parser("eval", help="evaluate a fine-tuned checkpoint (official or a run's) on a split",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", type=Path, metavar="CONFIG.yaml", help="a run config (optional)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a dotted key of the config (repeatable)")
    p.add_argument("--backbone", metavar="NAME", help=f"one of: {', '.join(BACKBONES)}")
    p.add_argument("--method", metavar="NAME", help=f"one of: {', '.join(METHODS)} (default: from the checkpoint)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option (e.g. mode=fixed)")
    p.add_argument("--checkpoint", metavar="PATH", help="the fine-tuned file to evaluate (model.finetuned)")
    p.add_argument("--pretrained", metavar="PATH", help="the backbone's pre-training file (model.pretrained)")
    p.add_argument("--bank", metavar="PATH", help="the memory bank of a Point-PEFT model")
    p.add_argument("--dataset", metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--root", metavar="DIR", help="the dataset's root folder")
    p.add_argument("--synthetic", action="store_true", help="the root holds generated data (recorded as such)")
    p.add_argument("--split", default="test", choices=["test", "train"], help="split to evaluate (default test)")
    p.add_argument("--vote", type=int, default=0, metavar="N",
                   help="also run the official voting with N votes per sample (official: 10); default off")
    p.add_argument("--repeats", type=int, default=1, metavar="R", help="voting passes, the best kept (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the voting subsets (default 0)")
    p.add_argument("--batch-size", type=int, metavar="N", help="evaluation batch (default train.eval_batch_size, 64)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--evals-dir", type=Path, default=REPO / "results" / "evals", metavar="DIR",
                   help="where eval records go (default results/evals)")
    p.set_defaults(func=run)


def _flag_overrides(args, method: str | None) -> dict:
    from harness.cli.build_cache import _options

    out: dict = {}
    for flag, key in (("backbone", "model.backbone"), ("checkpoint", "model.finetuned"),
                      ("pretrained", "model.pretrained"), ("dataset", "data.dataset"), ("root", "data.root")):
        if getattr(args, flag) is not None:
            out[key] = getattr(args, flag)
    if method is not None:
        out["model.method"] = method
    if args.bank is not None:
        out["model.method_options.bank_path"] = args.bank
    for key, value in _options(args.option).items():
        out[f"model.method_options.{key}"] = value
    if args.synthetic:
        out["data.synthetic"] = True
    if args.batch_size is not None:
        out["train.eval_batch_size"] = args.batch_size
    return out


def _default_method(path) -> str:
    from models.checkpoints import classify, read_checkpoint

    kind = classify(*read_checkpoint(path))
    if kind.method == "point_peft":
        return "point_peft_faithful" if kind.layout == "official" else "point_peft"
    return "full"


def _config(args):
    from harness import config as run_config
    from harness.cli import UserError
    from models.errors import ConfigError

    method = args.method
    if args.config is not None:
        raw = run_config.load_yaml(args.config)
    else:
        missing = [f"--{f}" for f in ("backbone", "dataset", "root", "checkpoint") if getattr(args, f) is None]
        if missing:
            raise UserError(f"eval without a config needs {', '.join(missing)}")
        raw = run_config.ConfigTree({}, {})
        if method is None:
            path = run_config.resolve_path(args.checkpoint)
            if not path.is_file():
                raise ConfigError(f"--checkpoint: checkpoint file not found: {path}")
            method = _default_method(path)
    sets = [item for group in args.overrides for item in group]
    tree = run_config.ConfigTree(run_config.apply_overrides(dict(raw), raw.sources, sets), raw.sources)
    cfg = run_config.resolve(tree, _flag_overrides(args, method), source="eval flags")
    if cfg.model.finetuned is None:
        raise UserError("eval needs the fine-tuned file: --checkpoint PATH (or model.finetuned in the config)")
    run_config.check_paths(cfg)
    return cfg


def run(args) -> int:
    import time

    import torch
    from torch.utils.data import DataLoader

    from harness import config as run_config
    from harness import train
    from harness.catalog import dataset_info
    from harness.cli import UserError
    from harness.data import build_dataset
    from harness.evaluate import accuracy_counts, majority_baseline, percent, vote_counts
    from harness.memory_bank import MemoryBankError, bank_record, load_memory_bank, read_memory_bank
    from harness.results import write_record

    if args.vote < 0 or args.repeats < 1:
        raise UserError(f"--vote must be >= 0 and --repeats >= 1, got {args.vote} and {args.repeats}")
    start, t0 = train._now(), time.perf_counter()
    cfg = _config(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = dataset_info(cfg.data.dataset)
    torch.manual_seed(cfg.train.seed)
    net = train._build_model(cfg, info.num_classes, info.family)
    backbone_id, files = train.load_weights(cfg, net, print)
    bank = None
    if train._needs_bank(net):
        given = cfg.model.method_options.get("bank_path")
        if given is None:
            raise MemoryBankError("a Point-PEFT model needs its memory bank: --bank PATH (the authors' "
                                  "cache_shape.pt, or run_all.py build-cache)")
        path = run_config.resolve_path(given)
        load_memory_bank(path, net, expect={"dataset": cfg.data.dataset})
        bank = bank_record(path, read_memory_bank(path))
    net.to(device).eval()

    opts = {"permute": False}
    if cfg.data.dataset == "modelnet40":
        opts["use_normals"] = cfg.data.use_normals
    data = build_dataset(cfg.data.dataset, run_config.resolve_path(cfg.data.root), args.split, **opts)
    loader = DataLoader(data, batch_size=cfg.train.eval_batch_size, shuffle=False)
    counts = accuracy_counts(net, loader, cfg.data.npoints, device)
    metrics = {"acc": percent(counts), "correct": int(counts[0]), "seen": int(counts[1])}
    if args.vote:
        point_all = min(cfg.data.point_all, int(data.points.shape[1]))
        best = 0.0
        for r in range(args.repeats):
            gen = torch.Generator().manual_seed(train._mix(args.seed, "vote", r, 0))
            best = max(best, percent(vote_counts(net, loader, cfg.data.npoints, point_all, args.vote, gen, device)))
        metrics.update(acc_vote=best, votes=args.vote, repeats=args.repeats)
    baseline = majority_baseline(data.labels, data.class_names)
    metrics.update(majority_baseline=baseline["acc"], majority_class=baseline["class"])

    ckpt = files["finetuned"]
    eval_id = (f"{cfg.model.backbone}-{cfg.model.method}-{cfg.data.dataset}-{args.split}-{ckpt['sha256'][:12]}"
               + (f"-vote{args.vote}" if args.vote else ""))
    sha, dirty = train._git_commit()
    record = {
        "schema": 1, "kind": "eval", "eval_id": eval_id, "backbone": cfg.model.backbone,
        "method": cfg.model.method, "dataset": cfg.data.dataset, "split": args.split,
        "variant": cfg.record_variant, "data_source": "synthetic" if cfg.data.synthetic else "official",
        "checkpoint": ckpt, "pretrained": files.get("pretrained"), "backbone_id": backbone_id,
        "memory_bank": bank, "metrics": metrics,
        "selection": "none: one given checkpoint, evaluated once",
        "data": {"samples": len(data), "npoints": cfg.data.npoints, "fingerprint": cfg.data.fingerprint,
                 "class_counts": {args.split: train._class_counts(data, info.num_classes)}},
        "device": train._device_name(device), "git_commit": sha, "git_dirty": dirty,
        "packages": train._packages(), "config": run_config.to_dict(cfg),
        "start_time": start, "end_time": train._now(), "wall_time_s": time.perf_counter() - t0,
    }
    out = args.evals_dir / f"{eval_id}.json"
    write_record(out, record)
    vote = f", voting ({args.vote} votes) {metrics['acc_vote']:.2f}%" if args.vote else ""
    print(f"{eval_id}: accuracy {metrics['acc']:.2f}% ({metrics['correct']}/{metrics['seen']}){vote}; "
          f"majority-class baseline {baseline['acc']:.2f}% ({baseline['class']!r}); record {out}")
    print(f"checkpoint sha256 {ckpt['sha256']}; data fingerprint {cfg.data.fingerprint} of {cfg.data.root} "
          f"({len(data)} {args.split} samples)")
    return 0
