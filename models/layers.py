"""Transformer and point-patch layers shared by the three backbones.

Parameter names follow the official checkpoints (``first_conv.{0,1,3}``, ``norm1``,
``attn.qkv``, ``mlp.fc1`` ...), so the backbones' state dicts load official files as they are.
Written with torch alone: no timm (it pulls torchvision and a CUDA torch).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models import ops
from models.errors import ConfigError

# Activation recomputation of the transformer sub-layers (``Mlp``, ``Attention``), a memory
# lever: "frozen" recomputes a sub-layer in backward when its weights are frozen (PEFT methods;
# full fine-tuning is untouched), "all" always, "off" never. Through ``Recomputable.normed`` the
# pre-norm LayerNorm is recomputed with it, so a block keeps only its two residual-stream inputs.
# Recomputation repeats the same float operations, so values and gradients are bit-for-bit those
# without it, and it stops after the last kept tensor (torch's early stop: the frozen output
# projections are not redone). A frozen linear layer saves no input anyway (autograd keeps only
# what the required gradients need), so what "frozen" drops are the GELU input (4x the width),
# the attention's q, k, v and output, and the LayerNorm outputs. Default "frozen": on Point-MAE
# Point-PEFT (CPU, batch 32) it keeps 545 instead of 1231 MiB of activations for backward; the
# bench's "Memory levers" table (README) measured 12-24% less peak training memory for 1.11-1.29x
# the step time across the backbones (`recompute: off` when speed matters more).
RECOMPUTE_MODES = ("off", "frozen", "all")
DEFAULT_RECOMPUTE = "frozen"


class Recomputable(nn.Module):
    """A sub-layer whose forward may run under ``torch.utils.checkpoint`` (see RECOMPUTE_MODES)."""

    recompute = DEFAULT_RECOMPUTE

    def set_recompute(self, mode: str) -> None:
        if mode not in RECOMPUTE_MODES:
            raise ConfigError(f"recompute {mode!r} is not one of {RECOMPUTE_MODES}")
        self.recompute = mode

    def _recomputes(self, args: tuple = ()) -> bool:
        if self.recompute == "off" or not torch.is_grad_enabled() or not _needs_backward(self, args):
            return False
        return self.recompute == "all" or not any(p.requires_grad for p in self._weights())

    def _weights(self):
        raise NotImplementedError

    def _run(self, fn, *args):
        if self._recomputes(args):
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def normed(self, norm: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
        """``self(norm(x), *args)`` for a pre-norm block. When recomputing, the norm is
        recomputed with the sub-layer, so backward keeps only ``x`` (which the norm keeps
        anyway) instead of ``x`` and ``norm(x)``. ``norm`` must have no running state."""
        return self._run(self._normed, norm, x, *args)

    def _normed(self, norm: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
        return self._forward(norm(x), *args)


def _needs_backward(layer: nn.Module, args: tuple) -> bool:
    """Whether backward will reach this call: a tensor argument, or a parameter of the layer or
    of a module argument (the pre-norm), requires grad. When none does (a frozen stretch of the
    network, such as a linear probe's blocks), autograd saves nothing there and a checkpoint
    would only add work; under ``torch.compile`` its region would also land in a graph compiled
    for inference, whose rematerialisation pass refuses the attention kernel (tagged as seeded
    random for its dropout argument)."""
    modules = [layer] + [a for a in args if isinstance(a, nn.Module)]
    return (any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
            or any(p.requires_grad for m in modules for p in m.parameters()))


def set_recompute(model: nn.Module, mode: str) -> nn.Module:
    """Set the recompute mode (``RECOMPUTE_MODES``) of every sub-layer of ``model``."""
    for m in model.modules():
        if isinstance(m, Recomputable):
            m.set_recompute(mode)
    return model


def _onednn_linear_available() -> bool:
    """Whether oneDNN's inner product runs here (asked once, on the first ``linear`` call)."""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), torch.ones(4, 3), torch.ones(4), "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 4.0)))
    except Exception:  # noqa: BLE001 - a build or CPU without the op
        return False


# None until the first call asks; tests and the bench's multiply-add count set it to False
_ONEDNN_LINEAR: bool | None = None


def _onednn_fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear`` takes oneDNN for this call: float32 dense CPU tensors of matching shapes
    (bias 1-D and contiguous, or None), outside autocast and ``torch.compile``, oneDNN available.
    Anything else (including what ``F.linear`` rejects) goes to ``F.linear``."""
    global _ONEDNN_LINEAR
    if not (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and x.layout == weight.layout == torch.strided and weight.dim() == 2 and x.dim() >= 1
            and x.shape[-1] == weight.shape[1] and weight.shape[0] > 0 and x.numel() > 0
            and (bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"
                                  and bias.layout == torch.strided and bias.dim() == 1
                                  and bias.shape[0] == weight.shape[0] and bias.is_contiguous()))
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return False
    if _ONEDNN_LINEAR is None:
        _ONEDNN_LINEAR = _onednn_linear_available()
    return _ONEDNN_LINEAR


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """oneDNN's inner product ``x @ weight.T + bias`` (bias in its epilogue) for inputs that
    ``_onednn_fits``, or None if oneDNN refuses this call (the caller takes ``F.linear``)."""
    try:
        return torch.ops.mkldnn._linear_pointwise(x, weight if weight.is_contiguous() else weight.contiguous(),
                                                  bias, "none", [], "")
    except RuntimeError:
        return None


class _InnerProduct(torch.autograd.Function):
    """``F.linear`` with oneDNN's inner product for the output and the input gradient; the
    weight gradient stays MKL's GEMM (oneDNN's is faster for the blocks' 10^3 rows but up to
    1.8x slower for the patch encoders' 10^4-10^6). Saves what the needed gradients use, as
    autograd does for ``F.linear``: the input only when the weight needs a gradient, the weight
    only when the input does. The output is no view (callers change it in place: an in-place op
    on a view would cost a copy in backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        need_x, need_w, _ = ctx.needs_input_grad
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.has_bias = bias is not None
        out = _inner_product(x.reshape(-1, x.shape[-1]), weight, bias)
        if out is None:
            out = F.linear(x, weight, bias)
            return out.clone() if out._is_view() else out
        if x.dim() == 2:
            return out
        # (rows, out) -> (..., out) on the same storage, not as a view of it
        return out.new_empty(0).set_(out.untyped_storage(), out.storage_offset(), (*x.shape[:-1], out.shape[-1]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = _inner_product(grad2, weight.t(), None)
            grad_x = (grad2.mm(weight) if grad_x is None else grad_x).view(*grad.shape[:-1], weight.shape[1])
        if need_w:
            grad_w = grad2.t().mm(x.reshape(-1, x.shape[-1]))
        if need_b and ctx.has_bias:
            grad_b = grad2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., in), weight (out, in), bias (out,) or None ->
    (..., out). For float32 on the CPU (outside autocast and ``torch.compile``, whose CPU backend
    packs the weights itself; ``_onednn_fits``) the output, and in backward the input gradient,
    come from oneDNN's inner product (AVX-512 wherever the CPU has it; MKL's GEMM takes its AVX2
    path on AMD CPUs): on an AMD EPYC (family 26, AVX-512, 2 threads) 1.6-2.2x faster than
    ``F.linear`` for the blocks' and patch encoders' products, the input gradient 1.6-2x; a full
    fine-tuning training step (batch 32) 1.24x / 1.32x / 1.10x as fast on Point-MAE / Point-BERT
    / Point-M2AE, Point-PEFT's 1.26x / 1.29x / 1.05x. The same sums in another order (~1e-6
    relative). Otherwise, or where oneDNN refuses a call, ``F.linear``. On the oneDNN path: not
    twice differentiable (a clear error), no forward-mode AD (``torch.func.jvp``)."""
    if _onednn_fits(x, weight, bias):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _InnerProduct.apply(x, weight, bias)
        out = _inner_product(x, weight, bias)
        if out is not None:
            return out
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, hooks and state dict) whose forward is ``linear``: oneDNN's
    inner product for float32 on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm 0.4.5's trunc_normal_(std): N(0, std) truncated at +-2 (absolute, not +-2 std)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0, b=2.0)


class DropPath(nn.Module):
    """Per-sample stochastic depth (timm's): drops the residual branch of whole samples."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if x.dtype not in (torch.float32, torch.float64):  # keep rounded to half precision would differ
            return x * mask / keep
        # x / keep for kept samples, x / inf = 0 for dropped ones: one pass over x (and one in
        # backward) instead of two; the same values as timm's x.div(keep) * mask, bit for bit.
        return x / torch.full_like(mask, keep).masked_fill_(mask == 0, float("inf"))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Linearly increasing rates over the blocks: linspace(0, max_rate, depth)."""
    return [float(r) for r in torch.linspace(0, max_rate, depth)]


class Mlp(Recomputable):
    """fc1 -> GELU (exact erf form) -> fc2; dropout 0 as in all three backbones."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def _weights(self):
        return self.fc1.weight, self.fc2.weight

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._forward, x)


class Attention(Recomputable):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    qkv has no bias and proj has one, as in the official blocks. ``mask`` is boolean with
    True = may attend, broadcast over heads: (B, N, N) or (B, 1, N, N).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def _weights(self):
        return self.qkv.weight, self.proj.weight

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(self._forward, x, mask)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        # registration order = official state-dict order: norm1, norm2, mlp, attn
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn.normed(self.norm1, x, mask))
        return x + self.drop_path(self.mlp.normed(self.norm2, x))


class TransformerEncoder(nn.Module):
    """A stack of blocks; the positional embedding is re-added before every block."""

    def __init__(self, dim: int, depth: int, num_heads: int, drop_path: list[float] | float = 0.0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False):
        super().__init__()
        rates = drop_path if isinstance(drop_path, list) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, rates[i]) for i in range(depth))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos, mask)
        return x


class Group(nn.Module):
    """Patch grouping: FPS centers, kNN neighbourhoods, neighbours relative to their center.

    ``knn="stable"`` is KNN_CUDA's ordering (Point-MAE, Point-M2AE); ``knn="point_bert"`` is
    Point-BERT's expansion-distance topk. Returns (neighborhood (B,G,K,3), center (B,G,3),
    idx (B,G,K) into the input points).
    """

    def __init__(self, num_group: int, group_size: int, knn: str = "stable"):
        super().__init__()
        if knn not in ("stable", "point_bert"):
            raise ValueError(f"unknown kNN flavour {knn!r}: expected 'stable' or 'point_bert'")
        self.num_group = num_group
        self.group_size = group_size
        self.knn = knn

    def neighbours(self, xyz: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        if self.knn == "stable":
            return ops.knn(xyz, center, self.group_size)[1]
        return ops.knn_point(self.group_size, xyz, center)

    def forward(self, xyz: torch.Tensor):
        center = ops.fps(xyz, self.num_group)
        idx = self.neighbours(xyz, center)
        neighborhood = ops.gather_points(xyz, idx) - center[:, :, None]
        return neighborhood, center, idx

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}, knn={self.knn!r}"


class MiniPointNet(nn.Module):
    """The patch encoder: shared point MLP, max-pool, [global, local] concat, MLP, max-pool.

    Point-MAE / Point-BERT ``Encoder`` is MiniPointNet(3, 128, 256, 512, E); Point-M2AE's
    token-merging levels use MiniPointNet(c, c, c, d, d). Input (B, G, K, C_in) -> (B, G, out).

    The official layers are 1x1 ``Conv1d`` on (groups, channels, points) and keep those
    parameter names and shapes; the forward runs them as linears (``linear``) on channels-last
    (groups * points, channels) rows, which is the same maths (float rounding aside, ~1e-6) and
    2-4x faster on the CPU, backward included (mkldnn's 1x1 convolution backward is slow).
    BatchNorm normalises over the same groups * points values per channel. The second stage's
    first layer acts on [global; local]: W [g; l] + b = (W_g g + b) + W_l l, so the global half
    is computed once per group instead of once per point (a quarter of the encoder's
    multiply-adds). When nothing needs a gradient and BatchNorm uses its running statistics
    (inference, frozen PEFT stems) groups are independent and run through ``_encode_frozen`` in
    chunks of ``NO_GRAD_CHUNK`` (a bounded transient memory instead of several (groups * K, 512)
    buffers), with each BatchNorm folded into the linear before it, max-pooling by ``amax`` (no
    indices) and, where the first stage widens (hidden1 < mid), its last layer folded into the
    local half of the second stage: W_l (W_3 h + b_3) = (W_l W_3) h + W_l b_3, so the widest
    per-point product runs from hidden1 instead of mid channels (Point-MAE / Point-BERT: 128
    instead of 256; a fifth of the encoder's multiply-adds). Same maths, float rounding aside
    (~1e-7 relative).
    """

    def __init__(self, in_channels: int, hidden1: int, mid: int, hidden2: int, out_channels: int):
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(in_channels, hidden1, 1), nn.BatchNorm1d(hidden1), nn.ReLU(inplace=True),
            nn.Conv1d(hidden1, mid, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * mid, hidden2, 1), nn.BatchNorm1d(hidden2), nn.ReLU(inplace=True),
            nn.Conv1d(hidden2, out_channels, 1))
        self.out_channels = out_channels

    # groups per chunk when rows are independent (no autograd, BatchNorm on running statistics)
    NO_GRAD_CHUNK = 1024

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, k, c = groups.shape
        rows = groups.reshape(b * g, k, c)
        if self._rows_independent(groups):  # each group on its own: chunks bound the transient memory
            with torch.no_grad():
                out = torch.cat([self._encode_frozen(part) for part in rows.split(self.NO_GRAD_CHUNK)])
        else:
            out = self._encode(rows)
        return out.view(b, g, self.out_channels)

    def _rows_independent(self, groups: torch.Tensor) -> bool:
        """True when no gradient flows (autograd off, or nothing here requires grad) and every
        BatchNorm normalises with its running statistics."""
        if any(m.training or m.running_var is None for m in self.modules() if isinstance(m, nn.BatchNorm1d)):
            return False
        return not torch.is_grad_enabled() or not (
            groups.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _encode_frozen(self, rows: torch.Tensor) -> torch.Tensor:
        """``_encode`` for independent rows (see the class doc): BatchNorm folded, amax pooling."""
        n, k, c = rows.shape
        conv1, bn1, _, conv3 = self.first_conv
        conv4, bn2, _, conv6 = self.second_conv
        w1, b1 = _fold_batch_norm(conv1, bn1)
        hidden = linear(rows.reshape(n * k, c), w1, b1).relu_()
        w3, b3 = conv3.weight[:, :, 0], conv3.bias
        mid = w3.shape[0]
        w4, b4 = _fold_batch_norm(conv4, bn2)
        w_glob, w_local = w4[:, :mid], w4[:, mid:]
        if hidden.shape[1] < mid:  # the local half straight from the narrower hidden layer
            glob = linear(hidden, w3, b3).view(n, k, mid).amax(dim=1)
            feat = linear(hidden, w_local @ w3).view(n, k, -1)
            feat.add_(linear(glob, w_glob, torch.addmv(b4, w_local, b3))[:, None, :])
        else:
            local = linear(hidden, w3, b3).view(n, k, mid)
            feat = linear(local, w_local).add_(linear(local.amax(dim=1), w_glob, b4)[:, None, :])
        feat = linear(feat.relu_(), conv6.weight[:, :, 0], conv6.bias)
        return feat.amax(dim=1)

    def _encode(self, rows: torch.Tensor) -> torch.Tensor:
        """(groups, K, C_in) -> (groups, out)."""
        n, k, c = rows.shape
        feat = _channels_last(self.first_conv, rows.reshape(n * k, c)).view(n, k, -1)
        glob = feat.max(dim=1).values  # (groups, mid)
        first = self.second_conv[0]
        mid = feat.shape[-1]
        weight = first.weight[:, :, 0]
        feat = linear(feat, weight[:, mid:]).add_(linear(glob, weight[:, :mid], first.bias)[:, None, :])
        feat = _channels_last(self.second_conv[1:], feat.view(n * k, -1))
        return feat.view(n, k, -1).max(dim=1).values


def _fold_batch_norm(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, in) and bias of ``bn(conv(x))`` as one linear map, BatchNorm on its running
    statistics: W' = s W, b' = s (b - mean) + beta with s = gamma / sqrt(var + eps)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return conv.weight[:, :, 0] * scale[:, None], torch.addcmul(bn.bias, conv.bias - bn.running_mean, scale)


def _channels_last(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run Conv1d(k=1) / BatchNorm1d / ReLU layers on (rows, channels) input."""
    for layer in seq:
        x = linear(x, layer.weight[:, :, 0], layer.bias) if isinstance(layer, nn.Conv1d) else layer(x)
    return x


def point_encoder(out_channels: int) -> MiniPointNet:
    """Point-MAE / Point-BERT patch encoder for xyz patches (3 -> 128 -> 256, 512 -> 512 -> E)."""
    return MiniPointNet(3, 128, 256, 512, out_channels)


def pos_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Positional embedding MLP Linear -> GELU -> Linear (keys ``.0`` and ``.2``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def mlp_head(in_dim: int, num_classes: int, batch_norm: bool = True, dropout: float = 0.5,
             hidden: int = 256) -> nn.Sequential:
    """The classification head.

    With BN (Point-MAE, Point-M2AE): Linear, BN, ReLU, Dropout, Linear, BN, ReLU, Dropout,
    Linear (indices 0/1/4/5/8). Without (Point-BERT): Linear, ReLU, Dropout, Linear (0/3).
    """
    if not batch_norm:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(hidden, num_classes))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes))
