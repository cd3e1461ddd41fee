"""``run_all.py ckpt inspect FILE``: what a checkpoint or memory-bank file is, before a sweep."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Say what a downloaded (or a run's) file is, without changing anything:
  checkpoint: backbone, Point-PEFT or full, pre-training or fine-tuned, official or project
  layout, container and 'module.' prefix, tensors and values (Point-PEFT tensors apart),
  sha256, and what a strict load onto the matching model would report (the same one line
  `train` / `eval` would print, or OK with the counts);
  memory bank: the authors' bare (384, M) tensor or a build-cache file, its shape, sha256 and
  metadata.

examples:
  python run_all.py ckpt inspect ckpts/ckpt-best.pth
  python run_all.py ckpt inspect ckpts/pretrain.pth
  python run_all.py ckpt inspect ckpts/cache_shape.pt"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ckpt", help="inspect checkpoint and memory-bank files",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("inspect", help="what a checkpoint or memory-bank file is",
                           description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("file", type=Path, metavar="FILE")
    q.add_argument("--backbone", metavar="NAME", help="try the strict load onto this backbone (default: detected)")
    q.add_argument("--method", metavar="NAME",
                   help="try the strict load with this method (default: point_peft_faithful for the authors' "
                        "Point-PEFT files, point_peft for project ones, full otherwise)")
    p.set_defaults(func=run)


def _num_classes(state: dict) -> int:
    heads = sorted((k for k in state if k.startswith("cls_head_finetune.") and k.endswith(".weight")),
                   key=lambda k: int(k.split(".")[1]))
    return int(state[heads[-1]].shape[0]) if heads else 15


def _bank_lines(path: Path) -> list[str] | None:
    """Lines about a memory-bank file, or None if the file is not one."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain torch file: let the checkpoint reader say why
        return None
    from models.peft.point_peft.memory_bank import FORMAT, read_memory_bank

    if not (isinstance(obj, torch.Tensor) or (isinstance(obj, dict) and obj.get("format") == FORMAT)):
        return None
    bank = read_memory_bank(path)
    meta = bank["meta"]
    what = ("the authors' bare memory-bank tensor (imported as it is; no metadata)"
            if meta.get("source") else "a memory bank written by build-cache")
    lines = [f"kind: {what}", f"shape: {tuple(bank['bank'].shape)} (feature dim x samples)"]
    for key in ("backbone", "checkpoint", "dataset", "split", "count", "normalize", "npoints", "created"):
        if key in meta:
            lines.append(f"{key}: {meta[key]}")
    return lines


def inspect_file(path: Path, backbone: str | None = None, method: str | None = None) -> list[str]:
    """The report lines (without the sha256 / size header)."""
    from models.checkpoints import classify, is_peft_key, load_checkpoint, read_checkpoint
    from models.classifier import build_model
    from models.errors import BenchError

    lines = _bank_lines(path)
    if lines is not None:
        return lines
    state, meta = read_checkpoint(path)
    kind = classify(state, meta)
    peft = [v for k, v in state.items() if is_peft_key(k)]
    lines = [f"kind: {kind.describe()}",
             f"container: {meta['container'] or 'bare state dict'}; 'module.' prefix on {meta['module_prefixed']} "
             f"of {len(state)} keys",
             f"tensors: {len(state)} with {sum(v.numel() for v in state.values()):,} values "
             f"(Point-PEFT: {len(peft)} with {sum(v.numel() for v in peft):,})"]
    for key in ("epoch", "metrics", "best_metrics", "test_acc", "run_id", "backbone_id"):
        if meta.get(key) is not None:
            lines.append(f"{key}: {meta[key]}")
    backbone = backbone or kind.backbone
    if backbone is None:
        return lines + ["strict load: not tried (backbone unknown; give --backbone)"]
    if method is None:
        method = ("point_peft_faithful" if kind.layout == "official" else "point_peft") \
            if kind.method == "point_peft" else "full"
    classes = _num_classes(state)
    family = "modelnet" if classes == 40 else "scan"
    target = f"{backbone} + {method} ({classes} classes, {family} preset)"
    if kind.layout == "run checkpoint" and meta.get("partial"):
        return lines + [f"strict load: needs the pre-training file {meta.get('backbone_id')} under it "
                        "(the run kept only its trained tensors); evaluate with eval --pretrained"]
    try:
        model = build_model(backbone, classes, method=method, family=family)
        report = load_checkpoint(model, path, backbone, kind=kind.stage)
    except BenchError as err:
        return lines + [f"strict load onto {target}: FAILS: {err}"]
    new = " (kept at init: the head and PEFT modules a pre-training file cannot hold)" \
        if report.kind == "pretrain" and report.missing else ""
    return lines + [f"strict load onto {target}: OK as {report.kind}: loaded {len(report.loaded)}, "
                    f"missing {len(report.missing)}{new}, unexpected {len(report.unexpected)}, "
                    f"dropped {len(report.dropped)}"]


def run(args) -> int:
    from models.checkpoints import file_sha256
    from models.errors import CheckpointError

    path = args.file
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    print(f"file: {path} ({path.stat().st_size:,} bytes)")
    print(f"sha256: {file_sha256(path)}")
    for line in inspect_file(path, args.backbone, args.method):
        print(line)
    return 0
