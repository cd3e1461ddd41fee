"""Point-PEFT behaviour on reduced geometry: training step, batch (in)dependence, query encoder,
retrieval, IDW, M2AE masks, options."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from models.classifier import build_model
from models.errors import ConfigError
from models.peft.point_peft.geometric_adapter import LocalAttention, geometric_branch, idw_weights, make_geometry
from models.peft.point_peft.model import MissingMemoryBankWarning, PointPEFT
from models.peft.point_peft.prompt import cache_prompt, retrieve
from models import ops

pytestmark = pytest.mark.usefixtures("one_thread")


# Small versions of the three backbones (same widths and depths; few patches and points).
SMALL = {
    "point_mae": (dict(num_group=16, group_size=8), dict(query_num_group=8, query_group_size=8), 256),
    "point_bert": (dict(num_group=16, group_size=8), {}, 256),
    "point_m2ae": (dict(num_groups=(64, 32, 16), group_sizes=(16, 8, 8)), {}, 256),
}


def small_model(backbone="point_mae", mode="fixed", seed=0, bank_columns=40, **options):
    backbone_opts, method_opts, _ = SMALL[backbone]
    torch.manual_seed(seed)
    model = build_model(backbone, 15, method="point_peft", method_options={"mode": mode, **method_opts, **options},
                        **backbone_opts)
    if bank_columns:
        model.set_memory_bank(F.normalize(torch.randn(model.query_dim, bank_columns), dim=0))
    return model


def points(batch, backbone="point_mae", seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, SMALL[backbone][2], 3, generator=gen) * 2 - 1


# ---------------------------------------------------------------------------------------------
# One optimiser step

@pytest.mark.parametrize("backbone,mode", [("point_mae", "fixed"), ("point_mae", "faithful"),
                                           ("point_m2ae", "fixed"), ("point_bert", "fixed")])
def test_step_changes_only_trainable_tensors(backbone, mode):
    model = small_model(backbone, mode)
    if backbone == "point_m2ae":  # open the gate so every adapter gets a non-zero gradient
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("ad_gate"):
                    p.fill_(0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    query_before = {k: v.clone() for k, v in model.query_encoder.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    opt.zero_grad()
    loss = F.cross_entropy(model(points(4, backbone)), torch.arange(4))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    after = model.state_dict()

    unused = {n for n in trainable if (mode == "faithful" and backbone == "point_mae" and (
        n.endswith("ad_gate") or any(f"blocks.{i}.prompt_embeddings" in n or f"blocks.{i}.cp_adapter" in n
                                     for i in range(6, 12))))}
    for name in trainable:
        if name in unused:
            assert grads[name] is None, name
        else:
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
            assert not torch.equal(after[name], before[name]), name
    frozen_bn = {f"{n}.{b}" for n, m in model.named_modules()
                 if isinstance(m, torch.nn.BatchNorm1d) and not m.weight.requires_grad
                 for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert frozen_bn  # the patch encoders' BatchNorms
    for name, value in after.items():
        if name in trainable:
            continue
        if name in frozen_bn and mode == "faithful":
            if not name.endswith("num_batches_tracked") and "token_embed.1" not in name and "token_embed.2" not in name:
                assert not torch.equal(value, before[name]), f"B12: {name} should update in faithful mode"
            continue
        if name in frozen_bn or name not in {k for k, _ in model.named_buffers()}:
            assert torch.equal(value, before[name]), name  # frozen parameter or frozen-BN buffer
    for name, value in model.query_encoder.state_dict().items():
        assert torch.equal(value, query_before[name]), name


def test_fixed_mode_keeps_frozen_batchnorms_in_eval():
    model = small_model().train()
    frozen = list(model.frozen_batchnorms())
    assert frozen and all(not m.training for m in frozen)
    assert model.cls_head_finetune[1].training and model.blocks.blocks[0].out_transform[0].training
    faithful = small_model(mode="faithful").train()
    assert all(m.training for m in faithful.frozen_batchnorms())
    assert not model.query_encoder.training and not faithful.query_encoder.training


# ---------------------------------------------------------------------------------------------
# Batch (in)dependence

@pytest.mark.parametrize("backbone", ["point_mae", "point_m2ae", "point_bert"])
def test_fixed_mode_sample_does_not_depend_on_its_batch(backbone):
    model = small_model(backbone).eval()
    pts = points(4, backbone)
    with torch.no_grad():
        ref = model(pts)
        shuffled = model(pts[[2, 0, 3, 1]])
        replaced = model(torch.cat([pts[:1], points(3, backbone, seed=7)]))
        alone = model(pts[1:2])
    torch.testing.assert_close(shuffled, ref[[2, 0, 3, 1]], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(replaced[0], ref[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], ref[1], atol=2e-5, rtol=1e-4)


def test_faithful_mode_reproduces_b1_batch_mixing():
    """Official MAE: for b >= 1 the prompt blocks' neighbours are other samples' tokens (B1)."""
    model = small_model("point_mae", "faithful").eval()
    a, b, c = points(1, seed=1), points(1, seed=2), points(1, seed=3)
    with torch.no_grad():
        ab, ac, cb = model(torch.cat([a, b])), model(torch.cat([a, c])), model(torch.cat([c, b]))
    torch.testing.assert_close(ab[0], ac[0], atol=1e-6, rtol=0)  # sample 0 reads only its own rows
    assert (ab[1] - cb[1]).abs().max() > 1e-4  # sample 1 changes when only sample 0 changed


def test_faithful_m2ae_sample_one_depends_on_sample_zero():
    model = small_model("point_m2ae", "faithful").eval()
    a, b, c = points(1, "point_m2ae", 1), points(1, "point_m2ae", 2), points(1, "point_m2ae", 3)
    with torch.no_grad():
        ab, cb = model(torch.cat([a, b])), model(torch.cat([c, b]))
    assert (ab[1] - cb[1]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Query encoder

@pytest.mark.parametrize("backbone,mode", [("point_mae", "fixed"), ("point_mae", "faithful"),
                                           ("point_bert", "fixed"), ("point_m2ae", "fixed"),
                                           ("point_m2ae", "faithful")])
def test_query_from_backbone_grouping_equals_standalone_query(backbone, mode):
    model = small_model(backbone, mode).eval()
    pts = points(3, backbone)
    with torch.no_grad():
        standalone = model.query_features(pts)
        if backbone == "point_m2ae":
            shared = model._query_from_levels(pts, model.group(pts))
        else:
            shared = model._query_from_stem(pts, *model.stem(pts))
    assert standalone.shape == (3, 384)
    torch.testing.assert_close(shared, standalone, atol=1e-5, rtol=1e-5)


def test_query_encoder_is_outside_parameters_and_state_but_moves_with_the_model():
    model = small_model()
    names = {n for n, _ in model.named_parameters()} | set(model.state_dict())
    assert not any("query" in n for n in names)
    assert "memory_bank" not in model.state_dict()  # non-persistent buffer
    q_params = sum(p.numel() for p in model.query_encoder.parameters())
    assert q_params > 21_000_000 and not any(p.requires_grad for p in model.query_encoder.parameters())
    model.double()
    assert next(model.query_encoder.parameters()).dtype == torch.float64
    assert model.memory_bank.dtype == torch.float64
    assert model(points(2).double()).dtype == torch.float64


def test_query_encoder_is_a_copy_of_the_pretrained_weights(tmp_path):
    torch.manual_seed(3)
    source = build_model("point_mae", 15, num_group=16, group_size=8)
    state = {f"MAE_encoder.{k}": v for k, v in source.state_dict().items()
             if not k.startswith(("cls_", "cls_head"))}
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": state}, path)
    model = build_model("point_mae", 15, method="point_peft", pretrained=str(path), num_group=16, group_size=8,
                        method_options={"query_num_group": 8, "query_group_size": 8})
    q = model.query_encoder.state_dict()
    for key, value in q.items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert model.checkpoint_sha256 and len(model.checkpoint_sha256) == 64
    # the backbone file also loads onto the built Point-PEFT model; only the new parts are missing
    from models.checkpoints import load_checkpoint
    report = load_checkpoint(model, str(path), "point_mae")
    assert report.missing and all(model.param_group(k) != "frozen:blocks" for k in report.missing)
    # a later change of the tuned biases does not reach the query encoder ...
    with torch.no_grad():
        model.blocks.blocks[0].mlp.fc1.bias.add_(1.0)
    assert torch.equal(model.query_encoder.blocks.blocks[0].mlp.fc1.bias, source.blocks.blocks[0].mlp.fc1.bias)
    # ... unless one re-takes it on purpose
    model.reset_query_encoder()
    assert torch.equal(model.query_encoder.blocks.blocks[0].mlp.fc1.bias, model.blocks.blocks[0].mlp.fc1.bias)


# ---------------------------------------------------------------------------------------------
# Retrieval, IDW, local attention

def test_retrieval_on_a_synthetic_bank():
    bank = torch.eye(6)[:, [3, 1, 4, 0, 5, 2]] * 2.0  # columns: e3, e1, e4, e0, e5, e2 (norm 2)
    bank = bank / bank.norm(dim=0)
    query = torch.tensor([[0.1, 0.5, 0.0, 0.9, 0.3, 0.0]])
    scores, idx, weights, agg, values = retrieve(query, bank, k=3)
    q = query / query.norm()
    assert idx.tolist() == [[0, 1, 2]]  # columns e3 (0.9), e1 (0.5), e4 (0.3): descending
    torch.testing.assert_close(scores, q[:, [3, 1, 4]])
    torch.testing.assert_close(weights, torch.softmax(q[:, [3, 1, 4]], dim=-1))  # temperature 1
    torch.testing.assert_close(values, bank.t()[[0, 1, 2]].unsqueeze(0))
    torch.testing.assert_close(agg, (weights[0, :, None] * bank.t()[[0, 1, 2]]).sum(0, keepdim=True))
    prompt = cache_prompt(query, bank, k=3)
    assert prompt.shape == (1, 5, 6)
    torch.testing.assert_close(prompt[0, 0], query[0])  # the raw query, not normalised
    torch.testing.assert_close(prompt[0, 1], agg[0])
    torch.testing.assert_close(prompt[0, 2:], values[0])
    # leave-one-out skips the best match
    assert retrieve(query, bank, k=2, exclude_top1=True)[1].tolist() == [[1, 2]]


def test_missing_bank_gives_zeros_and_warns():
    model = small_model(bank_columns=0)
    with pytest.warns(MissingMemoryBankWarning):
        cache = model.cache_tokens(torch.randn(2, 384))
    assert cache.shape == (2, 10, 384) and cache[:, 1:].abs().sum() == 0
    with pytest.raises(ConfigError, match=r"\(384, M\)"):
        model.set_memory_bank(torch.randn(96, 50))


def test_idw_with_a_coincident_point():
    torch.manual_seed(0)
    src = torch.rand(1, 64, 3) * 2 - 1
    tgt = src.clone()  # every target coincides with one source (target i on source i)
    stable = idw_weights(tgt, src, "stable")
    assert (stable.diagonal(dim1=1, dim2=2) > 1 - 1e-4).all()  # each copies its coincident source
    torch.testing.assert_close(stable.sum(-1), torch.ones(1, 64))
    expanded = idw_weights(tgt, src, "expanded")
    d2 = ops.square_distance(tgt, src)  # the official |a|^2 + |b|^2 - 2ab
    recip = 1 / (d2 + 1e-8)
    torch.testing.assert_close(expanded, recip / recip.sum(-1, keepdim=True))
    off = d2.diagonal(dim1=1, dim2=2) != 0
    assert off.any()  # B15: some coincident pairs are not at distance 0 in float32 (about 1e-7 here;
    assert d2.diagonal(dim1=1, dim2=2).abs().max() < 1e-5  # larger under TF32, where it stops dominating)
    rows = off[0]
    assert (expanded[0, rows] - stable[0, rows]).abs().max() > 1e-6  # the copy is no longer exact
    if (d2.diagonal(dim1=1, dim2=2) < 0).any():  # a negative "distance" pushes weights out of [0, 1]
        assert (expanded > 1).any() or (expanded < 0).any()
    top2 = idw_weights(tgt[:, :5] + 0.01, src, "stable", neighbors=2)
    assert ((top2 > 0).sum(-1) == 2).all()


def test_local_attention_shapes_scale_and_pre_gather_rewrite():
    torch.manual_seed(0)
    attn1, norm3 = LocalAttention(384), torch.nn.LayerNorm(384)
    assert attn1.qkv.weight.shape == (54, 384) and attn1.qkv.bias is None
    assert attn1.proj.weight.shape == (384, 18) and abs(attn1.scale - 18 ** -0.5) < 1e-12
    assert sum(p.numel() for p in attn1.parameters()) == 73 * 384
    u = torch.randn(2, 20, 384)
    fi = torch.stack([torch.randperm(20)[:5] for _ in range(2)])
    ki = torch.randint(0, 20, (2, 5, 4))
    geo = make_geometry(20, False, fi, ki, 20, torch.rand(2, 20, 5))
    out_t = torch.nn.Sequential(torch.nn.BatchNorm1d(384), torch.nn.GELU()).eval()
    got = geometric_branch(u, geo, attn1, norm3, out_t, pool="max", center_coef=0.3, drop_rate=0.0,
                           drop_unit="group", training=False)
    # reference: gather first, then the official local attention on each group
    n = torch.stack([u[b, ki[b]] for b in range(2)])  # (2, 5, 4, C)
    g = n.reshape(10, 4, 384)
    q, k, v = attn1.qkv(norm3(g)).view(10, 4, 3, 6, 3).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * 18 ** -0.5, -1) @ v
    g = g + attn1.proj(a.transpose(1, 2).reshape(10, 4, 18))
    v_ref = out_t(g.max(1).values.view(2, 5, 384).transpose(1, 2)).transpose(1, 2)
    v_ref = v_ref + 0.3 * torch.stack([u[b, fi[b]] for b in range(2)])
    torch.testing.assert_close(got, v_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("drop_rate, amp", [(0.0, False), (0.5, False), (0.0, True)])
def test_geometric_branch_chunks_give_the_same_values_and_gradients(monkeypatch, drop_rate, amp):
    from models.peft.point_peft import geometric_adapter as ga
    torch.manual_seed(0)
    attn1, norm3 = LocalAttention(384), torch.nn.LayerNorm(384)
    out_t = torch.nn.Sequential(torch.nn.BatchNorm1d(384), torch.nn.GELU())
    u0 = torch.randn(3, 20, 384)
    fi = torch.stack([torch.randperm(20)[:7] for _ in range(3)])
    geo = make_geometry(20, False, fi, torch.randint(0, 20, (3, 7, 4)), 20, torch.rand(3, 20, 7))
    params = [*attn1.parameters(), *norm3.parameters()]
    calls = []

    def run(chunk_values):
        monkeypatch.setattr(ga, "CHUNK_VALUES", chunk_values)
        u = u0.clone().requires_grad_()
        torch.manual_seed(1)                            # the same drop-path draw in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = geometric_branch(u, geo, attn1, norm3, out_t, pool="max_mean", center_coef=0.3,
                                   drop_rate=drop_rate, drop_unit="group", training=True)
        calls.append(ga.groups_per_chunk(21, 4, 384, "cpu"))
        grads = torch.autograd.grad(out.float().square().sum(), [u, *params])
        return out.detach().float(), grads

    one, one_grads = run(1 << 40)                   # 21 groups in one chunk
    many, many_grads = run(4 * 384 * 2)             # chunks of 2 groups: 11 chunks
    assert calls == [21, 2]
    bf16 = dict(atol=2e-2, rtol=2e-2)                 # bf16: rounding only
    torch.testing.assert_close(many, one, **(bf16 if amp else dict(atol=1e-6, rtol=1e-6)))
    for a, b in zip(many_grads, one_grads):
        torch.testing.assert_close(a, b, **(bf16 if amp else dict(atol=1e-5, rtol=1e-5)))


def test_geometric_branch_chunks_by_groups_per_chunk_on_its_device(monkeypatch):
    from models.peft.point_peft import geometric_adapter as ga
    asked, real = [], ga.groups_per_chunk
    monkeypatch.setattr(ga, "groups_per_chunk", lambda *a: asked.append(a) or 1)   # one group per chunk
    torch.manual_seed(0)
    attn1, norm3 = LocalAttention(384), torch.nn.LayerNorm(384)
    out_t = torch.nn.Sequential(torch.nn.BatchNorm1d(384), torch.nn.GELU()).eval()
    u = torch.randn(2, 20, 384)
    geo = make_geometry(20, False, torch.stack([torch.randperm(20)[:5] for _ in range(2)]),
                        torch.randint(0, 20, (2, 5, 4)), 20, torch.rand(2, 20, 5))
    kw = dict(pool="max", center_coef=0.3, drop_rate=0.0, drop_unit="group", training=False)
    per_group = geometric_branch(u, geo, attn1, norm3, out_t, **kw)
    assert asked == [(10, 4, 384, "cpu")]           # groups, k, C and the tensor's device type
    monkeypatch.setattr(ga, "groups_per_chunk", real)
    torch.testing.assert_close(per_group, geometric_branch(u, geo, attn1, norm3, out_t, **kw))


def test_groups_per_chunk_is_all_groups_off_the_cpu():
    from models.peft.point_peft import geometric_adapter as ga
    cpu = ga.groups_per_chunk(2048, 16, 384, "cpu")
    assert cpu == ga.CHUNK_VALUES // (16 * 384) < 2048      # cache-sized chunks on the CPU
    assert ga.groups_per_chunk(2048, 16, 384, "cuda") == 2048  # one chunk: launches bound a GPU step
    assert ga.groups_per_chunk(0, 16, 384, "cuda") == 1


# ---------------------------------------------------------------------------------------------
# M2AE attention masks (B7)

def test_m2ae_mask_alignment_fixed_vs_official_b7():
    center = torch.rand(1, 32, 3) * 2 - 1
    fixed = small_model("point_m2ae", "fixed")
    faithful = small_model("point_m2ae", "faithful")
    radius = fixed.radius_mask(1, center)
    t = 16
    m_fixed, plain = fixed.attention_masks(1, center)
    assert torch.equal(plain, radius)
    assert torch.equal(m_fixed[:, t:, t:], radius)  # point tokens keep their own radius mask
    assert m_fixed[:, :t].all() and m_fixed[:, :, :t].all()  # prompts attend and are attended globally
    m_off, _ = faithful.attention_masks(1, center)
    assert torch.equal(m_off[:, :32, :32], radius)  # written top-left although tokens sit at [16:, 16:]
    assert m_off[:, 32:].all() and m_off[:, :, 32:].all()  # the last 16 point tokens attend globally
    p = 3  # point token p uses the row of point p + T (its row in the sequence is t + p)
    assert torch.equal(m_off[0, t + p, t:32], radius[0, t + p, t:32])


# ---------------------------------------------------------------------------------------------
# Options

def test_unknown_and_invalid_options_are_config_errors():
    with pytest.raises(ConfigError) as err:
        small_model(bank_columns=0, prompt_tokens=10)
    assert "prompt_tokens" in str(err.value) and "num_prompt_tokens" in str(err.value)
    with pytest.raises(ConfigError, match="mode='exact'.*faithful, fixed"):
        small_model(bank_columns=0, mode="exact")
    with pytest.raises(ConfigError, match="cache_topk"):
        small_model(bank_columns=0, cache_topk=5)
    with pytest.raises(ConfigError, match="query_reuse_tokens"):
        small_model(bank_columns=0, mode="faithful", query_reuse_tokens=True)
    with pytest.raises(ConfigError, match="query_group_sizes"):
        small_model(bank_columns=0, query_group_sizes=[16, 8, 8])
    with pytest.raises(ConfigError, match="point_peft_faithful has mode faithful"):
        build_model("point_mae", 15, method="point_peft_faithful", method_options={"mode": "fixed"},
                    num_group=16, group_size=8)


def test_fixed_mode_knobs_can_be_switched_one_by_one():
    model = small_model(mode="fixed", idw_distance="expanded", freeze_bn_stats=False, query_reuse_tokens=False,
                        adapter_init="zero_up", geo_pool="max_mean", prompt_layers=[0, 1], cache_layers=[1])
    o = model.opts
    assert (o.mode, o.idw_distance, o.freeze_bn_stats, o.geo_indexing) == ("fixed", "expanded", False, "per_sample")
    assert [b.use_prompt for b in model.blocks.blocks][:3] == [True, True, False]
    assert [hasattr(b, "cp_adapter") for b in model.blocks.blocks][:2] == [False, True]
    assert model.blocks.blocks[0].adapter1.ln2.weight.abs().sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(points(2)).shape == (2, 15)
    assert isinstance(model, PointPEFT)


def test_m2ae_query_visibility_follows_the_next_level_neighbourhoods():
    model = small_model("point_m2ae", "faithful", bank_columns=0, query_group_sizes=[16, 4, 2])
    q = model.query_encoder
    levels = q.group(points(2, "point_m2ae"))
    vis = q.visibility(levels)
    assert vis[2].all()
    for b in range(2):
        expected = torch.zeros(32, dtype=torch.bool)
        expected[levels[2][1][b].reshape(-1)] = True
        assert torch.equal(vis[1][b], expected)
    assert not vis[1].all()  # 16 x 2 neighbourhoods leave some of the 32 level-1 tokens out
    below = torch.zeros(2, 64, dtype=torch.bool)
    for b in range(2):
        below[b, levels[1][1][b][vis[1][b]].reshape(-1)] = True
    official_extra = vis[0] & ~below
    assert official_extra.sum() <= 1 and (official_extra.sum() == 0 or official_extra[0, 0])
    fixed = small_model("point_m2ae", "fixed", bank_columns=0, query_group_sizes=[16, 4, 2]).query_encoder
    assert torch.equal(fixed.visibility(levels)[0], below)  # no cross-sample flat-index-0 mark


def test_m2ae_query_takes_the_pretraining_encoder_norm(tmp_path):
    backbone_opts = SMALL["point_m2ae"][0]
    torch.manual_seed(5)
    source = build_model("point_m2ae", 15, **backbone_opts)
    state = {k: v for k, v in source.state_dict().items() if k.startswith("h_encoder.")}
    norms = {f"h_encoder.encoder_norms.{i}.{w}": torch.randn(d) for i, d in enumerate((96, 192, 384))
             for w in ("weight", "bias")}
    path = tmp_path / "pre-train.pth"
    torch.save({"base_model": {**state, **norms}}, path)
    model = build_model("point_m2ae", 15, method="point_peft", pretrained=str(path), **backbone_opts)
    q = model.query_encoder
    assert torch.equal(q.h_encoder.encoder_norms[2].weight, norms["h_encoder.encoder_norms.2.weight"])
    assert torch.equal(q.h_encoder.token_embed[0].first_conv[0].weight,
                       state["h_encoder.token_embed.0.first_conv.0.weight"])
    # the harness's route: build, load the file onto the PEFT model, then reset from it
    from models.checkpoints import load_checkpoint
    other = build_model("point_m2ae", 15, method="point_peft", **backbone_opts)
    load_checkpoint(other, str(path), "point_m2ae")
    other.reset_query_encoder(sha256="x" * 64, checkpoint=str(path))
    for key, value in q.state_dict().items():
        assert torch.equal(other.query_encoder.state_dict()[key], value), key
