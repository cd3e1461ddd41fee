"""Point-PEFT method options: one ``mode`` switch plus the §11 knobs of docs/point-peft.md.

``mode: faithful`` reproduces the official numerics, bugs that change results included;
``mode: fixed`` (default) mends them. Every knob has the official value as its default where
the official code has one; the knobs that *are* the mended bugs default by mode
(``MODE_DEFAULTS``) and may be set one by one. Per-backbone official values are in
``BACKBONE_DEFAULTS``. Unknown options and bad values are ``ConfigError``s naming the option
and what is valid. docs/point-peft.md has the table of faithful vs fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from models.errors import ConfigError

MODES = ("faithful", "fixed")
KINDS = ("mae", "bert", "m2ae")  # Point-MAE, Point-BERT (port), Point-M2AE

# value checks: (description, predicate)
_CHOICES = {
    "mode": MODES,
    "prompt_pos": ("after_cls", "front"),
    "cache_query_pool": ("max", "mean_max"),
    "adapter_init": ("xavier", "zero_up"),
    "mlp_adapter_mode": ("scaled", "gated"),
    "geo_pool": ("max", "max_mean"),
    "geo_droppath": ("group", "sample"),
    "geo_indexing": ("official", "per_sample"),
    "mask_alignment": ("official", "aligned"),
    "idw_distance": ("expanded", "stable"),
    "unused_params": ("keep", "drop"),
    "query_padding": ("official", "per_sample"),
}


@dataclass(frozen=True)
class PointPEFTOptions:
    """Resolved options (no ``None`` left after ``resolve_options``)."""
    mode: str = "fixed"
    # point-prior prompt
    num_prompt_tokens: int | None = None     # T: 10 (MAE/BERT), 16 (M2AE)
    prompt_layers: Any = None                # block indices or "all": MAE/BERT 0..5, M2AE all
    cache_layers: Any = None                 # MAE/BERT 0..5, M2AE the last stage (10..14)
    prompt_dropout: float = 0.1
    prompt_init_std: float = 0.02
    prompt_pos: str | None = None            # "after_cls" (MAE/BERT) or "front" (M2AE)
    cache_topk: int | None = None            # K = T - 2
    cache_temperature: float = 1.0
    cache_query_pool: str | None = None      # "max" (MAE/BERT) or "mean_max" (M2AE)
    cp_adapter_dim: int = 8
    bank_path: str | None = None             # load this bank when the method is applied
    bank_exclude_self: bool = False          # train mode: skip the top-1 match (leave-one-out)
    # frozen query encoder (cp_model) geometry
    query_num_group: int | None = None       # MAE 64, BERT = backbone's
    query_group_size: int | None = None      # MAE 32, BERT = backbone's
    query_group_sizes: Any = None            # M2AE (16, 8, 8)
    query_reuse_tokens: bool | None = None   # take the query's patch tokens from the backbone's
    # MLP-branch adapter and block-end adapter
    adapter_dim: int = 16
    adapter_dropout: float = 0.1
    adapter_init: str = "xavier"
    mlp_adapter_mode: str | None = None      # "scaled" (MAE/BERT, x0.7) or "gated" (M2AE)
    adapter_scale: float = 0.7
    ad_gate_init: float = 0.0
    # geometry-aware adapter
    geo_num_centers: Any = None              # MAE/BERT G/2; M2AE (256, 64, 32)
    geo_k: int = 16
    geo_local_inner_dim: int = 18
    geo_local_heads: int = 6
    geo_share_local_attn: bool = True
    geo_pool: str = "max"
    geo_center_coef: float = 0.3
    geo_propagate_coef: float | None = None  # 0.3 (MAE/BERT), 0.2 (M2AE run script)
    geo_interp_neighbors: int = 0            # 0 = all sub-centers
    geo_use_prompt_coords: bool = True       # learnable prompt_cor
    geo_recompute: bool = True               # memory lever: local attention redone in backward
    train_bias_subset: bool = True           # attn.proj / mlp.fc1 / mlp.fc2 / norm1 / norm2 biases
    # the mended bugs (defaults by mode)
    attn_branch_droppath: bool | None = None  # B14
    geo_droppath: str | None = None           # B14: per group (official) or per sample
    freeze_bn_stats: bool | None = None       # B12
    geo_indexing: str | None = None           # B1
    mask_alignment: str | None = None         # B7 (M2AE)
    idw_distance: str | None = None           # B15
    unused_params: str | None = None          # B5
    query_padding: str | None = None          # M2AE query encoder: padding tokens seen (official)

    def prompt_blocks(self, depth: int) -> list[int]:
        return list(range(depth)) if self.prompt_layers == "all" else list(self.prompt_layers)

    def cache_blocks(self, depth: int) -> list[int]:
        return list(range(depth)) if self.cache_layers == "all" else list(self.cache_layers)


MODE_DEFAULTS = {
    "faithful": dict(attn_branch_droppath=False, geo_droppath="group", freeze_bn_stats=False,
                     geo_indexing="official", mask_alignment="official", idw_distance="expanded",
                     unused_params="keep", query_reuse_tokens=False, query_padding="official"),
    "fixed": dict(attn_branch_droppath=True, geo_droppath="sample", freeze_bn_stats=True,
                  geo_indexing="per_sample", mask_alignment="aligned", idw_distance="stable",
                  unused_params="drop", query_reuse_tokens=True, query_padding="per_sample"),
}

BACKBONE_DEFAULTS = {
    "mae": dict(num_prompt_tokens=10, prompt_layers=tuple(range(6)), cache_layers=tuple(range(6)),
                prompt_pos="after_cls", cache_query_pool="max", mlp_adapter_mode="scaled",
                geo_propagate_coef=0.3, query_num_group=64, query_group_size=32),
    "bert": dict(num_prompt_tokens=10, prompt_layers=tuple(range(6)), cache_layers=tuple(range(6)),
                 prompt_pos="after_cls", cache_query_pool="max", mlp_adapter_mode="scaled",
                 geo_propagate_coef=0.3),
    "m2ae": dict(num_prompt_tokens=16, prompt_layers="all", cache_layers=None,
                 prompt_pos="front", cache_query_pool="mean_max", mlp_adapter_mode="gated",
                 geo_propagate_coef=0.2, query_group_sizes=(16, 8, 8), geo_num_centers=None),
}

# Options that only make sense for some backbones.
_ONLY_FOR = {"query_num_group": ("mae", "bert"), "query_group_size": ("mae", "bert"),
             "query_group_sizes": ("m2ae",), "mask_alignment": ("m2ae",), "query_padding": ("m2ae",)}

OPTION_NAMES = tuple(f.name for f in fields(PointPEFTOptions))


def _bad(name: str, value, expected: str) -> ConfigError:
    return ConfigError(f"point_peft option {name}={value!r} is invalid: expected {expected}")


_BOOLS = {"bank_exclude_self", "query_reuse_tokens", "geo_share_local_attn", "geo_use_prompt_coords", "geo_recompute",
          "train_bias_subset", "attn_branch_droppath", "freeze_bn_stats"}
_POSITIVE_INTS = {"num_prompt_tokens", "cache_topk", "cp_adapter_dim", "query_num_group", "query_group_size",
                  "adapter_dim", "geo_k", "geo_local_inner_dim", "geo_local_heads"}
_INT_LISTS = {"query_group_sizes", "geo_num_centers"}  # an integer, or one per M2AE stage


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(name: str, value) -> None:
    if value is None:
        return
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise _bad(name, value, f"one of {', '.join(_CHOICES[name])}")
    elif name in _BOOLS:
        if not isinstance(value, bool):
            raise _bad(name, value, "true or false")
    elif name in _POSITIVE_INTS:
        if not _is_int(value) or value < 1:
            raise _bad(name, value, "a positive integer")
    elif name == "geo_interp_neighbors":
        if not _is_int(value) or value < 0:
            raise _bad(name, value, "a non-negative integer (0 = all sub-centers)")
    elif name in _INT_LISTS:
        ok = (_is_int(value) and value > 0) or (
            isinstance(value, (list, tuple)) and all(_is_int(v) and v > 0 for v in value))
        if not ok:
            raise _bad(name, value, "a positive integer or a list of them")
    elif name in ("prompt_layers", "cache_layers"):
        ok = value == "all" or (isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 0 for v in value))
        if not ok:
            raise _bad(name, value, '"all" or a list of block indices')
    elif name == "bank_path":
        if not isinstance(value, str):
            raise _bad(name, value, "a file path")
    else:  # numbers
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _bad(name, value, "a number")
        if name in ("prompt_dropout", "adapter_dropout") and not 0 <= value < 1:
            raise _bad(name, value, "a probability in [0, 1)")
        if name == "cache_temperature" and value <= 0:
            raise _bad(name, value, "a positive number")


def resolve_options(options: dict | None, kind: str, depth: int, num_group: int | None = None,
                    group_size: int | None = None) -> PointPEFTOptions:
    """Validate user options and fill the defaults of ``mode`` and backbone ``kind``.

    ``depth`` is the number of transformer blocks (12, or 15 for M2AE's three stages);
    ``num_group`` / ``group_size`` are the backbone's patch geometry (MAE/BERT).
    """
    if kind not in KINDS:
        raise ConfigError(f"point_peft has no recipe for backbone kind {kind!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown point_peft option {unknown[0]!r}; valid: {', '.join(OPTION_NAMES)}")
    for name, value in options.items():
        _check_value(name, value)
        if name in _ONLY_FOR and kind not in _ONLY_FOR[name]:
            raise ConfigError(f"point_peft option {name!r} does not apply to this backbone; "
                              f"it is for {', '.join(_ONLY_FOR[name])}")
    for name, value in options.items():
        if isinstance(value, list):
            options[name] = tuple(value)
    mode = options.get("mode", "fixed")
    values = {**BACKBONE_DEFAULTS[kind], **MODE_DEFAULTS[mode], **options, "mode": mode}
    if kind == "bert":  # the port's query encoder groups as the backbone does (docs/point-peft.md §10, our choice)
        values["query_num_group"] = values.get("query_num_group") or num_group
        values["query_group_size"] = values.get("query_group_size") or group_size
    if kind != "m2ae" and values.get("geo_num_centers") is None and num_group:
        values["geo_num_centers"] = num_group // 2
    if values.get("cache_topk") is None:
        values["cache_topk"] = values["num_prompt_tokens"] - 2
    # M2AE: cache_layers None and geo_num_centers None are filled by the M2AE model (its last
    # stage; the next stage's group counts)
    opts = replace(PointPEFTOptions(), **values)
    _check_consistency(opts, kind, depth)
    return opts


def _check_consistency(o: PointPEFTOptions, kind: str, depth: int) -> None:
    t = o.num_prompt_tokens
    if t < 1:
        raise _bad("num_prompt_tokens", t, "at least 1")
    k = o.cache_topk
    if k != t - 2 or k < 1:
        raise ConfigError(f"point_peft cache_topk={o.cache_topk} does not fit num_prompt_tokens={t}: the "
                          f"cache prompt [query; weighted; top-K] has K + 2 tokens, so K must be {t - 2} (>= 1)")
    for name in ("prompt_layers", "cache_layers"):
        value = getattr(o, name)
        if value not in (None, "all") and any(i >= depth for i in value):
            raise _bad(name, list(value), f"block indices below {depth}")
    if o.cache_layers is not None:
        missing = sorted(set(o.cache_blocks(depth)) - set(o.prompt_blocks(depth)))
        if missing:
            raise ConfigError(f"point_peft cache_layers {missing} have no prompts: the cache is added to the "
                              "prompt tokens, so every cache layer must be in prompt_layers")
    if o.prompt_pos == "after_cls" and kind == "m2ae":
        raise _bad("prompt_pos", o.prompt_pos, '"front" (Point-M2AE has no cls token)')
    if o.query_reuse_tokens and not o.freeze_bn_stats:
        raise ConfigError("point_peft query_reuse_tokens=true needs freeze_bn_stats=true: with the "
                          "backbone's BatchNorms in train mode its patch tokens differ from the frozen query encoder's")
    if o.geo_local_inner_dim % o.geo_local_heads:
        raise ConfigError(f"point_peft geo_local_inner_dim={o.geo_local_inner_dim} is not divisible by "
                          f"geo_local_heads={o.geo_local_heads}")
