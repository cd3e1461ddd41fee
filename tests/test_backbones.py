"""Point-BERT and Point-M2AE (and Point-MAE) against the official state-dict lists, counts and
the official behaviour: M2AE hierarchy, token merging, radius mask and pooling."""
from __future__ import annotations

import pytest
import torch

from harness.params import count_params
from models.classifier import build_model, default_npoints
from models.layers import Attention


pytestmark = pytest.mark.usefixtures("one_thread")


LISTS = {"point_mae": "point_mae_finetune_state_dict.txt",
         "point_bert": "point_bert_finetune_state_dict.txt",
         "point_m2ae": "point_m2ae_finetune_state_dict.txt"}


def official_entries(reference_list, backbone, section_b):
    entries = reference_list(LISTS[backbone], "A")
    if section_b:
        for key, (shape, _, _) in reference_list(LISTS[backbone], "B").items():
            entries[key] = (shape,) + entries[key][1:]
    return entries


@pytest.mark.parametrize("backbone,num_classes,family,total", [
    ("point_bert", 15, "scan", 22_059_535), ("point_bert", 40, "modelnet", 22_065_960),
    ("point_m2ae", 15, "scan", 12_921_935), ("point_m2ae", 40, "modelnet", 12_830_056),
    ("point_mae", 15, "scan", 22_093_327), ("point_mae", 40, "modelnet", 22_099_752)])
def test_state_dict_equals_official_list(reference_list, backbone, num_classes, family, total):
    model = build_model(backbone, num_classes, family=family)
    expected = official_entries(reference_list, backbone, section_b=family == "modelnet")
    sd = model.state_dict()
    params = dict(model.named_parameters())
    assert list(sd) == list(expected)  # same keys, same order
    for key, (shape, dtype, kind) in expected.items():
        assert list(sd[key].shape) == shape, key
        assert str(sd[key].dtype).replace("torch.", "") == dtype, key
        assert (key in params) == (kind == "param"), key
    assert count_params(model).total == total


def test_point_bert_official_scan_config_has_40_logits():
    """The official ScanObjectNN cfg keeps cls_dim 40: the count the README quotes."""
    model = build_model("point_bert", 40, family="scan")
    assert count_params(model).total == 22_065_960


def test_presets_follow_the_official_recipes():
    bert = build_model("point_bert", 15, family="scan")
    assert (bert.cfg.num_group, bert.cfg.group_size, default_npoints("point_bert", "scan")) == (64, 32, 1024)
    assert bert.group_divider.knn == "point_bert"
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in bert.cls_head_finetune)
    assert torch.count_nonzero(bert.cls_token) == 0 and bert.cls_pos.abs().max() > 0.5  # no trunc_normal
    scan, mn = build_model("point_m2ae", 15, family="scan"), build_model("point_m2ae", 40, family="modelnet")
    assert scan.cfg.group_sizes == (32, 16, 16) and mn.cfg.group_sizes == (16, 8, 8)
    assert (default_npoints("point_m2ae", "scan"), default_npoints("point_m2ae", "modelnet")) == (2048, 1024)
    rates = [b.drop_path.drop_prob for level in scan.h_encoder.encoder_blocks for b in level.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 15).tolist())
    assert [level.blocks[0].attn.num_heads for level in scan.h_encoder.encoder_blocks] == [6, 6, 6]


def _fwd_bwd(backbone, npoints, family="scan", **options):
    torch.manual_seed(0)
    model = build_model(backbone, 15, family=family, **options)
    pts = torch.randn(2, npoints, 3)
    logits = model(pts)
    logits.sum().backward()
    first = next(p for p in model.parameters() if p.grad is not None)
    return logits.detach(), first.grad.clone()


@pytest.mark.parametrize("backbone,npoints,options", [
    ("point_bert", 256, {"num_group": 16, "group_size": 8}),
    ("point_m2ae", 256, {"num_groups": (64, 32, 8), "group_sizes": (8, 4, 4)}),
    # official ModelNet40 geometry: 1024 points, 512 / 256 / 64 centers, 16 / 8 / 8 neighbours
    ("point_m2ae", 1024, {"family": "modelnet"}),
])
def test_forward_backward_is_deterministic(backbone, npoints, options):
    (a, ga), (b, gb) = _fwd_bwd(backbone, npoints, **options), _fwd_bwd(backbone, npoints, **options)
    assert a.shape == (2, 15) and torch.isfinite(a).all()
    assert torch.equal(a, b) and torch.equal(ga, gb)


def small_m2ae(**options):
    torch.manual_seed(0)
    cfg = {"num_groups": (64, 32, 8), "group_sizes": (8, 4, 4), **options}
    return build_model("point_m2ae", 15, family="scan", **cfg).eval()


def test_m2ae_levels_group_the_previous_level_and_merge_its_tokens():
    model = small_m2ae()
    pts = torch.randn(2, 256, 3)
    levels = model.group(pts)
    assert [tuple(l.idx.shape) for l in levels] == [(2, 64, 8), (2, 32, 4), (2, 8, 4)]
    for prev, level in zip(levels, levels[1:]):
        assert level.idx.max() < prev.center.shape[1]
        # the level's centers are a subset of the previous level's centers
        same = (level.center[:, :, None] == prev.center[:, None]).all(-1)
        assert same.any(-1).all()
    with torch.no_grad():
        prev = torch.randn(2, 64, 96)
        merged = model.embed_level(1, levels[1], prev)
        gathered = torch.stack([prev[b][levels[1].idx[b]] for b in range(2)])
        assert torch.equal(merged, model.h_encoder.token_embed[1](gathered))
        assert model.encode(pts).shape == (2, 8, 384)


def test_m2ae_radius_mask_matches_the_official_additive_mask():
    model = small_m2ae()
    center = model.group(torch.rand(2, 256, 3) - 0.5)[0].center  # 64 centers in a unit cube
    l, radius = 0, model.cfg.local_radius[0]
    mask = model.radius_mask(l, center)
    dist = torch.cdist(center, center)
    assert torch.equal(mask, ~(dist >= radius)) and mask.diagonal(dim1=1, dim2=2).all()
    assert mask.sum() > 2 * 64 and not mask.all()  # the radius really cuts at this scale
    attn = model.h_encoder.encoder_blocks[l].blocks[0].attn
    x = torch.randn(2, 64, 96)
    with torch.no_grad():
        q, k, v = attn.qkv(x).view(2, 64, 3, 6, 16).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * 16 ** -0.5 + (dist >= radius)[:, None].float() * -100000.0
        manual = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 64, 96))
        assert torch.allclose(attn(x, mask), manual, atol=1e-5)


def test_masked_attention_never_looks_beyond_the_radius():
    model = small_m2ae()
    center = model.group(torch.rand(1, 256, 3) - 0.5)[0].center
    mask = model.radius_mask(0, center)
    assert ((mask[0].sum(-1) > 1) & ~mask[0].all(-1)).any()
    attn: Attention = model.h_encoder.encoder_blocks[0].blocks[0].attn
    x = torch.randn(1, 64, 96, requires_grad=True)
    seen = mask[0].sum(-1)
    i = int(torch.where(seen > 1, seen, 10**6).argmin())  # masked keys and >1 visible ones
    attn(x, mask)[0, i].sum().backward()
    touched = x.grad[0].abs().sum(-1) > 0
    assert not touched[~mask[0, i]].any()
    assert touched[mask[0, i]].sum() > 1


def test_m2ae_pooling_per_family():
    x = torch.randn(2, 64, 384)
    scan = small_m2ae()
    mn = small_m2ae(pool="sum")
    n = scan.norm(x)
    assert torch.equal(scan.pool(x), torch.cat([n.mean(1), n[:, 1:].max(1).values], -1))  # token 0 not in max
    assert torch.equal(mn.pool(x), mn.norm(x).mean(1) + mn.norm(x).max(1).values)
    assert mn(torch.randn(2, 256, 3)).shape == (2, 15)
    assert mn.cls_head_finetune[0].in_features == 384 and scan.cls_head_finetune[0].in_features == 768


def test_m2ae_config_errors_are_one_line():
    with pytest.raises(ValueError, match="group_sizes has 2 levels"):
        build_model("point_m2ae", 15, group_sizes=(8, 4))
    with pytest.raises(ValueError, match="pool 'max'"):
        build_model("point_m2ae", 15, pool="max")
