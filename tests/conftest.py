"""Shared test helpers: repo paths and the official state-dict reference lists."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under pytest-xdist (`-n auto`: one worker per core) each worker and the processes its tests
    # start compute on one thread; two threads per worker would oversubscribe the cores, and
    # OpenMP's barrier stalls then cost up to 10x
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from slurm_support import ClusterUnavailable, slurm_cluster

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REFERENCE = Path(__file__).resolve().parent / "reference"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist every SLURM test runs in the same worker (``--dist loadgroup``, set in
    pyproject.toml): they share one test cluster per worker session."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


def parse_state_dict_list(name: str, section: str) -> dict[str, tuple[list[int], str, str]]:
    """Entries of one section ('A' Scan, 'B' ModelNet40 differences, 'C' pre-train) of a list file.

    Returns key -> (shape, dtype, kind); for 'C' kind is replaced by the fate column; 'B'
    rows carry only the shape (dtype and kind are those of section A).
    """
    out, current = {}, None
    for line in (REFERENCE / name).read_text().splitlines():
        if line.startswith("## ") and line[3:5] in ("A.", "B.", "C."):
            current = line[3]
            continue
        if current != section or not line or line.startswith("#"):
            continue
        cols = line.split("\t")
        shape = [int(s) for s in cols[1].strip("[]").split(",") if s.strip()]
        if section == "B":  # "key, shape, (A: old shape)": dtype and kind as in section A
            out[cols[0]] = (shape, None, None)
            continue
        out[cols[0]] = (shape, cols[2], cols[4] if section == "C" else cols[3])
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tests of many small ops run on one torch thread: as fast alone, and free of the OpenMP
    barrier stalls (up to 10x) that two threads hit when other jobs share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def reference_list():
    return parse_state_dict_list


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """One SLURM test cluster for the whole session; skipped (with the reason) where it cannot run."""
    pytest.importorskip("submitit")
    try:
        cluster = slurm_cluster(tmp_path_factory.mktemp("slurm"))
        env = cluster.__enter__()
    except ClusterUnavailable as err:
        pytest.skip(f"no SLURM test cluster: {err}")
    try:
        yield env
    finally:
        cluster.__exit__(None, None, None)
