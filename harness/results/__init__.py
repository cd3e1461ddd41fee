"""Result records -> tables, summary CSV, plots (and, on request, the README block).

Modules: ``records`` (atomic writes, loading that names bad files), ``tables`` (one row per
setup, comparability, markdown), ``stats`` (paired differences, Student-t intervals),
``plots`` (PNG). Everything is computed in memory first (``build_outputs``) and written
afterwards (``write_outputs``), each file atomically, so a README without markers leaves every
output untouched; a bad record is skipped and named (``Outputs.problems``).

The README block is written only when asked (``tables --readme``): regenerating tables never
edits a tracked file by default, so a later run's provenance (``git_dirty``) stays honest.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.results import plots, stats, tables
from harness.results.records import (DATA_SOURCES, IDENTITY_FIELDS, RECORD_FIELDS, SCHEMA_VERSION,  # noqa: F401
                                     ResultsError, cyclic_gc_paused, load_eval_records, load_records,
                                     load_records_and_rows,
                                     write_bytes_atomic, write_record)

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


class MarkersMissing(ResultsError):
    """A README without (or with broken) markers for the block to replace."""


def inject_readme(readme: bytes, block: str, where: Path | str = "README",
                  markers: tuple[str, str] = (README_START, README_END)) -> bytes:
    """Replace only what lies between the markers; every byte outside them is kept."""
    start, end = (m.encode() for m in markers)
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise MarkersMissing(f"{where}: needs exactly one '{markers[0]}' followed by one '{markers[1]}' "
                             "line where the tables go")
    newline = "\r\n" if b"\r\n" in readme else "\n"
    body = newline + block.strip("\n").replace("\n", newline) + newline
    i, j = readme.index(start) + len(start), readme.index(end)
    return readme[:i] + body.encode() + readme[j:]


def load_reference(path: Path | str) -> pd.DataFrame:
    """The paper's numbers; values are kept as text too, so tables show them as published."""
    try:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: cannot read the paper reference: {err}") from None
    needed = {"backbone", "method", "dataset", "variant", "trainable_params_M", "accuracy", "voting", "source"}
    if not needed <= set(ref.columns):
        raise ResultsError(f"{path}: missing columns {', '.join(sorted(needed - set(ref.columns)))}")
    ref["accuracy_value"] = pd.to_numeric(ref["accuracy"], errors="coerce")
    ref["params_value"] = pd.to_numeric(ref["trainable_params_M"], errors="coerce")
    return ref


@dataclass
class Tables:
    """Everything computed from one runs folder."""

    runs: pd.DataFrame            # one row per done run
    setups: pd.DataFrame          # one row per setup
    pairs: pd.DataFrame           # paired PEFT - full differences
    failed: list[dict]
    notes: list[str]
    problems: list[str] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)   # eval records of released / given checkpoints

    def markdown(self, reference: pd.DataFrame, level: int = 2) -> str:
        return tables.render_markdown(self.setups, self.pairs, reference, self.failed, self.notes,
                                      len(self.runs), level, self.evals)


def compute(records: list[dict], problems: list[str] | None = None, rows: list | None = None) -> Tables:
    """Rows, setups and paired differences of the records (the cycle collector paused
    meanwhile: with 100,000 records in memory each of its passes would rescan them all).
    ``rows``: ``tables.record_row`` of each record, as ``load_records_and_rows`` gives them
    (then ``records`` needs only the failed ones, as its row cache leaves them)."""
    with cyclic_gc_paused():
        runs, configs = tables.collect(records, rows)
        failed = [r for r in records if r["status"] == "failed"]
        setups, notes = tables.summarize(runs, configs, failed)
        return Tables(runs, setups, tables.paired(runs, setups), failed, notes, list(problems or []))


def build_outputs(runs_dir: Path | str, out_dir: Path | str, reference_path: Path | str,
                  readme: Path | str | None = None, plots_: bool = True, run_plots: bool = False,
                  ask=None, evals_dir: Path | str | None = None,
                  cache: bool = True) -> tuple[dict[Path, bytes], Tables]:
    """Every output file's bytes, and the computed tables; nothing is written here but the runs
    folder's row cache (``cache``: ``harness.results.rowcache``; unchanged records are not parsed).

    ``run_plots`` adds ``plots/runs.png`` (one point per run of the non-comparable setups) and
    ``plots/learning_curves.png`` (from each such run's metrics.csv). ``evals_dir``: eval records
    of ``run_all.py eval``, shown in their own "Released checkpoints" section."""
    out_dir = Path(out_dir)
    records, rows, problems = load_records_and_rows(runs_dir, tables.record_row, ask, cache=cache)
    evals, eval_problems = load_eval_records(evals_dir)
    reference = load_reference(reference_path)
    t = compute(records, problems + eval_problems, rows)
    t.evals = evals
    outputs = {out_dir / "tables.md": ("# Results\n\n" + t.markdown(reference)).encode(),
               out_dir / "summary.csv": t.setups.to_csv(index=False, lineterminator="\n").encode()}
    if len(t.pairs):
        outputs[out_dir / "paired.csv"] = t.pairs.to_csv(index=False, lineterminator="\n").encode()
    if readme is not None:
        readme = Path(readme)
        try:
            current = readme.read_bytes()
        except OSError as err:
            raise ResultsError(f"README {readme}: cannot read: {err.strerror}") from None
        outputs[readme] = inject_readme(current, t.markdown(reference, level=3), readme)
    if plots_:
        datasets = set(reference.dataset) | set(t.setups[t.setups.comparable].dataset)
        for dataset in sorted(datasets):
            outputs[out_dir / "plots" / f"{dataset}.png"] = plots.paper_plot(dataset, t.setups, reference)
    other = set(t.setups[~t.setups.comparable].setup_id) if len(t.setups) else set()
    if plots_ and run_plots and other:
        mine = t.runs[t.runs.setup_id.isin(other)]
        synthetic = (mine.data_source == "synthetic").all()
        title = ("Synthetic data: pipeline checks, NOT comparable to the paper" if synthetic
                 else "Runs not comparable to the paper (see tables.md for why)")
        outputs[out_dir / "plots" / "runs.png"] = plots.runs_plot(mine, title)
        curves = {}
        for r in mine.sort_values(["dataset", "backbone", "method", "seed"]).itertuples():
            frame, problem = plots.read_metrics(Path(runs_dir) / r.run_id / "metrics.csv")
            if problem:
                t.problems.append(problem)
            elif frame is not None:
                curves[f"{tables.BACKBONE_TITLES.get(r.backbone, r.backbone)} "
                       f"{tables.METHOD_TITLES.get(r.method, r.method)} s{r.seed}"] = frame
        if curves:
            outputs[out_dir / "plots" / "learning_curves.png"] = plots.curves_plot(
                curves, "Learning curves" + (" (synthetic data)" if synthetic else "") + ": per run, from metrics.csv")
    return outputs, t


def write_outputs(outputs: dict[Path, bytes]) -> list[Path]:
    """Write each file atomically, skipping those whose bytes are unchanged; returns those written."""
    written = []
    for path, data in outputs.items():
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                continue
        write_bytes_atomic(path, data)
        written.append(path)
    return written


def demo_report(runs_dir: Path | str, out_dir: Path | str, reference_path: Path | str) -> tuple[str, list[Path]]:
    """What ``run_all.py demo`` shows: writes tables, summary and plots (paper plots, the demo's
    own runs one point each, learning curves) under ``out_dir``; returns (the tables as
    markdown, the PNG files)."""
    outputs, t = build_outputs(runs_dir, out_dir, reference_path, run_plots=True)
    write_outputs(outputs)
    pngs = sorted(p for p in outputs if p.suffix == ".png")
    return outputs[Path(out_dir) / "tables.md"].decode(), pngs


__all__ = ["MarkersMissing", "ResultsError", "Tables", "build_outputs", "compute", "demo_report", "inject_readme",
           "load_records", "load_records_and_rows", "load_reference", "plots", "stats", "tables", "write_bytes_atomic", "write_outputs",
           "write_record", "README_START", "README_END", "RECORD_FIELDS"]
