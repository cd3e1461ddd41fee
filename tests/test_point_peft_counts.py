"""Point-PEFT parameter counts against docs/point-peft.md §7 (MAE, M2AE) and §10 (Point-BERT port).

Full-size models; the gradient check runs one B=2 forward/backward on fewer points than the
recipe (which tensors receive a gradient does not depend on the point count)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from harness.params import count_by_group, count_params, count_with_grad
from models.classifier import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


MAE_GROUPS = {"cls_head": 267_535, "adapter": 152_256, "adapter1": 152_256, "cp_adapter": 78_432,
              "prompt_embeddings": 46_080, "backbone_bias": 36_864, "attn1": 28_032, "out_transform": 9_216,
              "norm3": 768, "final_norm": 768, "cls_token+cls_pos": 768, "prompt_cor": 30, "ad_gate": 12}
M2AE_GROUPS = {"cls_head": 267_535, "adapter": 111_120, "adapter1": 111_120, "cp_adapter": 32_680,
               "prompt_embeddings": 53_760, "backbone_bias": 26_880, "attn1": 49_056, "out_transform": 6_720,
               "norm3": 1_344, "final_norm": 768, "prompt_cor": 48, "ad_gate": 15}
# Point-BERT port: the MAE recipe with Point-BERT's BN-free head (200,719 for 15 classes)
BERT_GROUPS = {**MAE_GROUPS, "cls_head": 200_719}
# fixed mode creates no unused tensors: blocks 6-11 have no prompts / cp_adapter, MAE/BERT no ad_gate
FIXED_DROP = {"prompt_embeddings": 23_040, "cp_adapter": 39_216, "ad_gate": 12}

CASES = [  # backbone, mode, npoints for the gradient check, total, trainable, with grad, groups
    ("point_mae", "faithful", 256, 22_560_409, 773_017, 710_749, MAE_GROUPS),
    ("point_mae", "fixed", 256, 22_498_141, 710_749, 710_749,
     {k: v - FIXED_DROP.get(k, 0) for k, v in MAE_GROUPS.items() if k != "ad_gate"}),
    ("point_bert", "faithful", 256, 22_526_617, 706_201, 643_933, BERT_GROUPS),
    ("point_bert", "fixed", 256, 22_464_349, 643_933, 643_933,
     {k: v - FIXED_DROP.get(k, 0) for k, v in BERT_GROUPS.items() if k != "ad_gate"}),
    ("point_m2ae", "faithful", 1024, 13_287_798, 661_046, 661_046, M2AE_GROUPS),
    ("point_m2ae", "fixed", 1024, 13_287_798, 661_046, 661_046, M2AE_GROUPS),
]


@pytest.mark.parametrize("backbone,mode,npoints,total,trainable,used,groups", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_point_peft_counts(backbone, mode, npoints, total, trainable, used, groups):
    model = build_model(backbone, 15, method="point_peft", method_options={"mode": mode})
    count = count_params(model)
    assert (count.total, count.trainable) == (total, trainable)
    trained = {g: c.trainable for g, c in count_by_group(model).items() if c.trainable}
    assert trained == groups
    assert all(c.trainable == 0 for g, c in count_by_group(model).items() if g.startswith("frozen:"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no memory bank: fine for counting
        assert count_with_grad(model, npoints) == used


def test_params_cli_lists_point_peft_in_both_modes():
    def rows(*extra):
        out = subprocess.run([sys.executable, "run_all.py", "params", "--backbone", "point_mae",
                              "--dataset", "scanobjectnn_pb_t50_rs", "--format", "json", *extra],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        return [(r["method"], r["total"], r["trainable"], r["with_grad"]) for r in json.loads(out.stdout)]

    assert rows("--method", "point_peft", "--no-grad-check") == [("point_peft", 22_498_141, 710_749, None)]
    assert rows("--method", "point_peft_faithful") == [("point_peft_faithful", 22_560_409, 773_017, 710_749)]


# The official runner's rule (docs/point-peft.md §6): a parameter trains if its DataParallel name contains one of these.
OFFICIAL_SUBSTRINGS = ("cp", "adapter1", "norm3", "attn1.", "out_transform", ".adapter.", "proj.bias", "fc1.bias",
                       "fc2.bias", "norm1.bias", "norm2.bias", "prompt_cor", "cls_pos", "cls_token", "cls_head_",
                       "norm.", "ad_gate", "prompt_embedding", "attn_free_linear", "cache_gate", ".gate.")


@pytest.mark.parametrize("backbone", ["point_mae", "point_bert", "point_m2ae"])
def test_trainable_set_equals_the_official_substring_rule(backbone):
    model = build_model(backbone, 15, method="point_peft", method_options={"mode": "faithful"})
    for name, p in model.named_parameters():
        official = any(s in f"module.{name}" for s in OFFICIAL_SUBSTRINGS)
        assert p.requires_grad == official, name
