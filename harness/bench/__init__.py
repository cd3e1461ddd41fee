"""``run_all.py bench``: speed and memory of the ops, the models and the tooling.

Five parts, each selectable with ``--only`` (a plain run: the first three):

* ``ops`` (``ops_cases``): our FPS / kNN vs fpsample, torch_cluster, pytorch3d (CPU) or
  pointnet2_ops, knn_cuda (CUDA), median seconds and ours/theirs;
* ``models`` (``model_cases``): training and eval samples/s and peak memory of every registered
  backbone x method, one fresh process per case (``python -m harness.bench --one SPEC``); on the
  CPU both peak RSS and the peak of live tensor bytes (``common.tensor_peak_bytes``);
* ``tooling`` (``tooling_cases``): expanding + dry-run submitting 1,000 runs, reporting the
  status of 1,000 SLURM runs, and building the tables from 100,000 result records;
* ``epoch`` (``epoch_cases``, ``--epoch``): a real training epoch of PB_T50_RS size per backbone x
  {full, point_peft} (x fp32/bf16 x compile off/on on CUDA);
* ``scaling`` (``scaling``, ``--scaling``): step time and peak memory as points and batch grow,
  with fitted growth exponents and a log-log PNG.

``run_bench`` returns the report (a plain dict, schema in ``results/bench/README.md``);
``report.build_targets`` scores it against the project's targets and ``write_outputs`` writes
``<out>/<device>-<date>[-epoch][-scaling][-quick].json`` and ``.md`` (and ``.png`` with scaling), and
for a run of the default parts the README block between
``<!-- bench:<device>:start -->`` and ``<!-- bench:<device>:end -->``.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

from harness.bench.common import (DEFAULT_PARTS, PARTS, SCHEMA_VERSION, BenchSetupError, allocator_env,
                                  check_device, device_name, git_commit)
from harness.bench.report import (MarkersMissing, build_targets, inject_block, model_batch, output_paths,
                                  readme_markers, render_markdown, to_json, validate_report)

__all__ = ["run_bench", "write_outputs", "BenchSetupError", "PARTS", "validate_report", "render_markdown"]


def run_bench(device: str = "cpu", quick: bool = False, only=DEFAULT_PARTS, log=print, backbones=None,
              methods=None, command: str | None = None, threads: int | None = None,
              epoch_samples: int | None = None, precisions=None, compiles=None, save_partial=None) -> dict:
    """Measure the selected parts on ``device`` and return the report with its targets.

    ``threads``: torch intra-op threads for every measurement (default: torch's default).
    ``epoch_samples``: clouds in the epoch part's epoch (default 11,416, PB_T50_RS train).
    ``precisions`` (of "fp32", "bf16"; models and epoch parts) and ``compiles`` (of False,
    True; epoch part): the CUDA cases to run, None for all; the CPU runs fp32 eager only.
    ``save_partial``: called with the report so far (``"partial": True``, targets from the cases
    done) after each models / epoch case and each part, so that a run stopped midway (a job's
    time limit, a lost node) keeps what it measured.
    """
    import torch

    check_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    only = tuple(p for p in PARTS if p in set(only))
    from harness.bench import epoch_cases, model_cases, ops_cases, scaling, tooling_cases

    if device == "cpu" and "models" in only:
        model_cases.official_reference()   # a damaged reference file fails here, before any case runs

    started = time.perf_counter()
    report = {
        "schema": SCHEMA_VERSION, "device": device, "device_name": device_name(device),
        "date": _dt.date.today().isoformat(), "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "quick": bool(quick), "parts": list(only), "git_commit": git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "allocator_env": allocator_env(), "command": command, "model_batch": None,
        "ops": [], "models": [], "tooling": [], "epoch": [], "scaling": [], "targets": [],
    }
    begun: list[str] = []   # the parts started so far: a partial report scores only these

    def checkpoint() -> None:
        if save_partial is not None:
            snapshot = {**report, "partial": True, "wall_s": time.perf_counter() - started, "parts": list(begun)}
            snapshot.update({part: list(entries) for part, entries in report.items() if part in PARTS})
            snapshot["model_batch"] = model_batch(snapshot["models"])
            snapshot["targets"] = build_targets(snapshot)
            save_partial(snapshot)

    def by_case(part: str, run, *args, **kwargs) -> None:
        """Run a part whose entries are saved (``checkpoint``) as each of its cases finishes."""
        begun.append(part)
        report[part] = _Progress(checkpoint)
        run(*args, entries=report[part], **kwargs)
        report[part] = list(report[part])

    torch_threads = torch.get_num_threads()   # as set above
    if "ops" in only:
        begun.append("ops")
        report["ops"] = ops_cases.run_ops(device, quick, log=log)
        checkpoint()
    if "models" in only:
        by_case("models", model_cases.run_models, device, quick, log=log, backbones=backbones, methods=methods,
                threads=torch_threads, precisions=precisions)
        report["model_batch"] = model_batch(report["models"])
    if "tooling" in only:
        begun.append("tooling")
        report["tooling"] = tooling_cases.run_tooling(quick, log=log)
        checkpoint()
    if "epoch" in only:
        by_case("epoch", epoch_cases.run_epochs, device, epoch_samples or epoch_cases.PB_T50_RS_TRAIN, log=log,
                backbones=backbones, threads=torch_threads, precisions=precisions, compiles=compiles)
    if "scaling" in only:
        by_case("scaling", scaling.run_scaling, device, quick, log=log, backbones=backbones, threads=torch_threads)
    report["targets"] = build_targets(report)
    report["wall_s"] = time.perf_counter() - started
    problems = validate_report(report)
    if problems:  # a bug in the bench itself, not in what it measured
        raise AssertionError("bench report does not match its schema: " + "; ".join(problems))
    return report


class _Progress(list):
    """A part's entry list that calls ``notify()`` after each append (partial reports)."""

    def __init__(self, notify):
        super().__init__()
        self._notify = notify

    def append(self, entry) -> None:
        super().append(entry)
        self._notify()


def write_outputs(report: dict, out_dir: Path, readme: Path | None) -> dict:
    """Write the JSON and markdown files and (when asked and marked) the README block.

    Returns {"json": path, "markdown": path, "readme": path or None, "readme_note": str}.
    A README without this device's markers is reported, not an error.
    """
    from harness.results import write_bytes_atomic

    json_path, md_path = output_paths(Path(out_dir), report)
    if report.get("scaling"):
        from harness.bench.scaling import plot
        png = md_path.with_suffix(".png")  # the stem names the scaling part already
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(report["scaling"], png)
        report["scaling_plot"] = png.name
    markdown = render_markdown(report)
    write_bytes_atomic(json_path, to_json(report))
    write_bytes_atomic(md_path, markdown.encode())
    done = {"json": json_path, "markdown": md_path, "readme": None, "readme_note": "README not requested",
            "plot": md_path.with_name(report["scaling_plot"]) if report.get("scaling_plot") else None}
    if readme is not None:
        start, end = readme_markers(report["device"])
        try:
            current = Path(readme).read_bytes()
            updated = inject_block(current, render_markdown(report, level=3), start, end, str(readme))
        except FileNotFoundError:
            done["readme_note"] = f"note: README {readme} not found; README not updated"
        except MarkersMissing as err:
            done["readme_note"] = (f"note: {err}; README not updated (add the two marker lines where the "
                                   f"{report['device']} bench table should go)")
        else:
            if updated != current:
                write_bytes_atomic(readme, updated)
            done["readme"] = Path(readme)
            done["readme_note"] = f"updated the {report['device']} bench block in {readme}"
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.bench --one SPEC`` (one model measurement, used by the models part)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--one":
        from harness.bench.model_cases import child_main
        return child_main(argv[1])
    print("usage: python -m harness.bench --one JSON_SPEC   (internal; use `python run_all.py bench`)",
          file=sys.stderr)
    return 2
