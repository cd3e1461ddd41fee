"""``run_all.py build-cache``: build the Point-PEFT memory bank of a training split."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

HELP = """\
Build the memory bank ("cache") of Point-PEFT's point-prior prompt: the frozen pre-trained
query feature of every training sample, one column each, L2-normalised (the same function the
model uses for its retrieval query, so build it from the checkpoint you fine-tune from).

The train split is read in file order without augmentation; each cloud is reduced to the
model's input size by FPS (as the official evaluation input is), in batches of --batch-size.
Every sample gets a column; only with --option mode=faithful is the last incomplete batch
dropped, as the official bank (11392 = 356 x 32 of PB_T50_RS's 11416) suggests. The file
records backbone, checkpoint sha256, query settings, dataset, split, count, dimension and
drop_last / left_out; loading it onto a model that differs in any of those is an error, and so
is loading it for a run or an evaluation on another dataset, a bank of the test split (--split
test is for analysis only: test features in the bank would leak into every prediction), or a
file whose tensor disagrees with its metadata.

examples:
  python run_all.py build-cache --backbone point_mae --dataset scanobjectnn_pb_t50_rs \\
      --root data/h5_files --checkpoint ckpts/pretrain.pth
  python run_all.py build-cache --backbone point_m2ae --dataset modelnet40 --root data/modelnet \\
      --checkpoint ckpts/pre-train.pth --out banks/m2ae_mn40.pt"""


def register(sub: argparse._SubParsersAction) -> None:
    from harness.catalog import DATASETS
    from models.classifier import BACKBONES

    p = sub.add_parser("build-cache", help="build the Point-PEFT memory bank of a training split",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, metavar="NAME", help=f"one of: {', '.join(BACKBONES)}")
    p.add_argument("--dataset", required=True, metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--root", required=True, metavar="DIR", help="the dataset's root folder")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="the backbone's official pre-training checkpoint (default: random init, for tests)")
    p.add_argument("--out", metavar="PATH",
                   help="bank file to write (default: memory_banks/<backbone>-<dataset>-<checkpoint sha|random-init>.pt)")
    p.add_argument("--split", default="train", choices=["train", "test"], help="split to read (default train; a test-split bank is refused by train and eval)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="batch size (default 32; never drops a sample unless --option mode=faithful)")
    p.add_argument("--npoints", type=int, metavar="N",
                   help="points per cloud fed to the model (default: the backbone's recipe for the dataset)")
    p.add_argument("--no-normalize", action="store_true", help="keep the raw features (default: L2-normalise columns)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a point_peft method option that changes the query encoder (e.g. query_num_group=64; "
                        "mode=faithful for a faithful Point-M2AE model, whose query differs by mode)")
    p.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backbone geometry override (e.g. num_group=128 for the 2048-point Point-BERT port)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _options(items: list[str], flag: str = "--option") -> dict:
    from harness.cli import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag} {item!r}: the value is not valid YAML") from None
    return out


def default_out(backbone: str, dataset: str, sha: str | None) -> Path:
    return Path("memory_banks") / f"{backbone}-{dataset}-{sha[:12] if sha else 'random-init'}.pt"


def run(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from harness.catalog import dataset_info
    from harness.cli import UserError
    from harness.data import build_dataset
    from harness.data.transforms import fps_points
    from harness.memory_bank import bank_drop_last, build_memory_bank, save_memory_bank
    from harness.train import check_device
    from models.classifier import BACKBONES, backbone_config, build_model, check_geometry, choose, default_npoints

    choose("backbone", args.backbone, BACKBONES)
    info = dataset_info(args.dataset)
    check_device(args.device)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.npoints is not None and args.npoints < 1:
        raise UserError(f"--npoints must be at least 1, got {args.npoints}")
    npoints = args.npoints or default_npoints(args.backbone, info.family)
    geometry = _options(args.backbone_option, "--backbone-option")
    check_geometry(args.backbone, backbone_config(args.backbone, info.num_classes, info.family, **geometry),
                   npoints)
    model = build_model(args.backbone, info.num_classes, method="point_peft", family=info.family,
                        method_options=_options(args.option), pretrained=args.checkpoint, **geometry)
    data = build_dataset(args.dataset, args.root, args.split, permute=False)
    if len(data) and data[0][0].shape[0] < npoints:
        raise UserError(f"{args.dataset} clouds hold {data[0][0].shape[0]} points, fewer than --npoints {npoints}")

    def collate(items):
        pts = torch.stack([p[:, :3] for p, _ in items])
        return fps_points(pts, npoints), torch.stack([torch.as_tensor(y) for _, y in items])

    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, drop_last=bank_drop_last(model),
                        collate_fn=collate)
    result = build_memory_bank(model, loader, device=args.device, progress=not args.no_progress,
                               normalize=not args.no_normalize, dataset=args.dataset, split=args.split)
    result["meta"]["npoints"] = npoints
    out = Path(args.out) if args.out else default_out(args.backbone, args.dataset, model.checkpoint_sha256)
    save_memory_bank(out, result)
    meta = result["meta"]
    dropped = f", {meta['left_out']} left out (faithful drop_last)" if meta["drop_last"] else ""
    print(f"wrote {out}: {meta['feature_dim']} x {meta['count']} ({args.backbone}, {args.dataset} "
          f"{args.split} of {len(data)}{dropped}, checkpoint {meta['checkpoint'][:12]}, normalize={meta['normalize']})")
    return 0
