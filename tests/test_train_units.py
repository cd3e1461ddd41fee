"""Fast pieces of the trainer: lr schedule, optimizer groups, smoothed loss, checkpoints."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness import checkpointing
from harness.config import ScheduleConfig, load_config
from harness.schedule import EpochLR, epoch_lr, lr_table, timm_cosine
from harness.train import adamw, error_info, param_group_names, param_groups, smoothed_cross_entropy
from models.classifier import build_model

REPO = Path(__file__).resolve().parent.parent


def spec_f(t: float) -> float:
    """The official recipes' schedule, written out with the official constants."""
    if t < 10:
        return 1e-6 + t * (5e-4 - 1e-6) / 10
    if t < 300:
        return 1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * t / 300))
    return 1e-6


def test_official_lr_sequence_matches_the_spec():
    cfg = load_config(REPO / "experiments" / "recipes" / "official.yaml")
    table = lr_table(cfg.optim.lr, cfg.schedule)
    assert len(table) == 301                                      # epochs 0..300
    assert table[0] == table[1] == 1e-6                           # the one-epoch lag
    for e in range(1, 301):
        assert table[e] == pytest.approx(spec_f(e - 1), rel=1e-12, abs=1e-15), e
    assert table[11] == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * 10 / 300)))
    assert max(table) == pytest.approx(spec_f(10)) and table.index(max(table)) == 11
    assert table[300] == pytest.approx(spec_f(299))               # the floor is never reached in the loop


def test_schedule_without_lag_and_without_warmup():
    s = ScheduleConfig(epochs=5, cosine_epochs=5, warmup_epochs=0, warmup_lr=0.0, min_lr=0.0, lag=False)
    assert lr_table(1.0, s) == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 5)) for t in range(5)])
    lagged = ScheduleConfig(epochs=3, cosine_epochs=3, warmup_epochs=0, warmup_lr=0.0, min_lr=0.0, lag=True)
    assert lr_table(1.0, lagged)[0] == 1.0                        # timm sets the base lr at construction
    assert timm_cosine(7, 1.0, 5, 0, 0.0, 0.1) == 0.1             # past t_initial: the floor


def test_epoch_lr_sets_every_group():
    p = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, 2))]
    opt = torch.optim.AdamW([{"params": p[:1], "weight_decay": 0.0}, {"params": p[1:]}], lr=9.0)
    sched = EpochLR(opt, 5e-4, ScheduleConfig())
    assert sched.set_epoch(12) == pytest.approx(spec_f(11))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(spec_f(11))] * 2
    state = sched.state_dict()
    other = EpochLR(opt, 5e-4, ScheduleConfig())
    other.load_state_dict(state)
    assert other.epoch == 12 and epoch_lr(12, 5e-4, ScheduleConfig()) == sched.set_epoch(12)


def test_param_groups_follow_the_official_rule():
    model = build_model("point_mae", 15)
    no_decay, decay = param_group_names(model)
    assert "cls_token" in no_decay and "cls_pos" in decay            # cls_pos IS decayed
    assert "blocks.blocks.0.attn.qkv.weight" in decay
    assert "blocks.blocks.0.norm1.weight" in no_decay                 # 1-D
    assert "encoder.first_conv.0.bias" in no_decay
    assert all(n.endswith(".bias") or model.get_parameter(n).ndim == 1 or "token" in n for n in no_decay)
    assert all(model.get_parameter(n).ndim > 1 and "token" not in n for n in decay)
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    assert sum(p.numel() for g in groups for p in g["params"]) == 22_093_327
    # frozen tensors are in no group
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.encoder.parameters())
    assert sum(p.numel() for g in param_groups(model, 0.05) for p in g["params"]) == 22_093_327 - frozen


def test_adamw_is_fused_on_the_cpu_and_steps_as_the_plain_loop():
    torch.manual_seed(0)
    model = build_model("point_bert", 15, num_group=8, group_size=8, trans_dim=32, depth=1, num_heads=2,
                        encoder_dims=32)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    fused = adamw(param_groups(model, 0.05), lr=1e-2)
    assert fused.defaults["fused"]
    groups = [{"params": [plain[n] for n, p in model.named_parameters() if any(p is q for q in g["params"])],
               "weight_decay": g["weight_decay"]} for g in param_groups(model, 0.05)]
    loop = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    for step in range(3):
        for n, p in model.named_parameters():
            p.grad = torch.randn_like(p)
            plain[n].grad = p.grad.clone()
        fused.step()
        loop.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), plain[n].detach(), atol=1e-6, rtol=1e-5)
        assert not torch.equal(p.detach(), start[n]), n  # the steps moved every tensor


def test_smoothed_cross_entropy_is_the_official_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 40), torch.randint(0, 40, (6,))
    eps = 0.3
    logp = torch.log_softmax(logits, 1)
    manual = -(logp.gather(1, target[:, None]).squeeze(1) * (1 - eps)
               + (logp.sum(1) - logp.gather(1, target[:, None]).squeeze(1)) * eps / 39).mean()
    assert smoothed_cross_entropy(logits, target, eps) == pytest.approx(manual.item(), rel=1e-6)
    assert smoothed_cross_entropy(logits, target, 0.0) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item())
    # differs from torch's label_smoothing (eps / n on every class, the target included)
    torch_ls = torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps).item()
    assert abs(torch_ls - manual.item()) > 1e-4


def test_partial_state_keeps_trainable_and_trained_buffers(tmp_path):
    model = build_model("point_mae", 15, num_group=8, group_size=8, trans_dim=32, depth=1, num_heads=2,
                        encoder_dims=32)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("cls_head_finetune"))
    model.train()
    model.encoder.eval()      # a frozen part kept in eval mode: its BN statistics do not change
    buffers = checkpointing.trained_buffer_names(model)
    assert buffers and all(b.startswith("cls_head_finetune") for b in buffers)
    state = checkpointing.model_state(model, partial=True, buffer_names=buffers)
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad} | set(buffers)
    checkpointing.save_atomic({"format": checkpointing.FORMAT, "model": state}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]      # no temp file left
    loaded = checkpointing.load(tmp_path / "c.pt")
    checkpointing.load_model_state(model, loaded["model"], True, "c.pt")
    with pytest.raises(Exception, match="does not fit the model"):
        checkpointing.load_model_state(model, {"nope": torch.zeros(1)}, True, "c.pt")


def test_error_info_points_at_the_innermost_project_frame():
    try:
        load_config(REPO / "no-such-file.yaml")
    except Exception as err:  # noqa: BLE001
        info = error_info(err)
    assert info["type"] == "ConfigError" and "config file not found" in info["message"]
    assert info["where"].startswith("harness/config.py:")
