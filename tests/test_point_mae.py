"""Point-MAE specifics: determinism, pos re-added before every block, qkv bias, head."""
from __future__ import annotations

import torch

from models.classifier import build_model

# The state-dict / count check against the official list is in test_backbones.py (all three).


def test_forward_backward_shapes_and_determinism():
    def run():
        torch.manual_seed(0)
        model = build_model("point_mae", 15, family="scan", num_group=16, group_size=8)
        pts = torch.randn(2, 256, 3)
        logits = model(pts)
        logits.sum().backward()
        return logits.detach(), model.encoder.first_conv[0].weight.grad.clone()
    (a, ga), (b, gb) = run(), run()
    assert a.shape == (2, 15)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_positional_embedding_is_added_before_every_block():
    torch.manual_seed(0)
    model = build_model("point_mae", 15, num_group=8, group_size=4).eval()
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
             for blk in model.blocks.blocks]
    x, pos, _ = model.embed(torch.randn(1, 64, 3))
    out = model.blocks(x, pos)
    for h in hooks:
        h.remove()
    assert torch.equal(seen[0], x + pos)
    # the input of block i+1 is the output of block i plus pos
    for i in range(len(seen) - 1):
        assert torch.allclose(seen[i + 1], model.blocks.blocks[i](seen[i]) + pos, atol=1e-6)
    assert torch.allclose(out, model.blocks.blocks[-1](seen[-1]))


def test_qkv_has_no_bias_and_head_shape():
    model = build_model("point_mae", 40, family="modelnet")
    assert model.blocks.blocks[0].attn.qkv.bias is None
    assert [m.out_features for m in model.cls_head_finetune if isinstance(m, torch.nn.Linear)] == [256, 256, 40]
