"""Experiment files -> run specs: expand the axes, apply rules, resolve configs, name runs.

An experiment file (``experiments/*.yaml``) names a base run config and the axes of the matrix::

    name: paper
    base: recipes/official.yaml          # a run config (with _base_ inheritance), relative path
    axes:                                # the cartesian product of these values
      backbone: [point_bert, point_mae, point_m2ae]
      method: [full, point_peft]
      dataset: [scanobjectnn_pb_t50_rs, modelnet40]
      variant: [plain, aug]
      seed: [0, 1, 2]
    variants:                            # what each variant value sets
      plain: {}
      aug: {train.augmentation: aug_rotate_y}
    rules:                               # settings for the cells that match, applied in order
      - when: {backbone: point_m2ae, dataset: modelnet40}
        set: {train.label_smoothing: 0.3}
      - when: {method: ppt}              # a rule may also swap the cell's base run config
        base: recipes/ppt.yaml           # (a method's official recipe); the last match wins
    exclude:                             # cells that do not exist
      - {dataset: modelnet40, variant: aug}

Every cell becomes a fully resolved run config; its ``run_id`` is derived from the config hash,
so the same cell always maps to the same run directory and re-submitting is idempotent. The
resolved config holds the data's content fingerprint and the checkpoint's sha256
(``harness.fingerprint``), so both ids follow the data and weights, not their paths.

A run's ``setup_id`` is the hash of the same config without the seed: the runs of one setup
differ only in their seed, and a table cell aggregates exactly one setup.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import config as run_config
from harness import fingerprint
from models.errors import ConfigError

# axis name -> dotted key of the run config it sets (variant sets what `variants` says)
AXIS_KEYS = {"backbone": "model.backbone", "method": "model.method", "dataset": "data.dataset",
             "seed": "train.seed", "variant": None}
TOP_KEYS = {"name", "description", "base", "axes", "variants", "rules", "exclude", "set"}


def setup_id(cfg: run_config.RunConfig) -> str:
    """16-hex sha256 of the resolved config without ``train.seed`` (and without the fields that
    do not change results): the runs of one setup differ only in their seed."""
    tree = json.loads(run_config.canonical_json(cfg))
    tree.get("train", {}).pop("seed", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One cell of the matrix: its coordinates, resolved config, run id and setup id."""

    run_id: str
    experiment: str
    cell: dict[str, Any]
    config: dict[str, Any]
    setup_id: str = ""

    def as_job(self) -> dict[str, Any]:
        """The picklable payload a job receives (plain data only)."""
        return {"run_id": self.run_id, "experiment": self.experiment, "cell": dict(self.cell),
                "config": self.config, "setup_id": self.setup_id}


def _error(path: Path, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def load_experiment(path: str | Path) -> dict[str, Any]:
    """Read and validate an experiment file; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} not found (see experiments/*.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise _error(path, f"malformed YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise _error(path, "expected a mapping with keys name, base, axes, ...")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise _error(path, f"unknown key(s) {unknown}; valid: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "base", "axes"):
        if key not in data:
            raise _error(path, f"missing required key '{key}'")
    from harness.launch import check_job_name   # the name becomes a job and folder name

    check_job_name(data["name"], f"{path}: name")
    if not isinstance(data["base"], str) or not data["base"]:
        raise _error(path, f"'base' must be the path of a run config, got {data['base']!r}")
    for key in ("set", "variants"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _error(path, f"'{key}' must be a mapping, got {type(data[key]).__name__}")
    axes = data["axes"]
    if not isinstance(axes, dict) or not axes:
        raise _error(path, "'axes' must map axis names to lists of values")
    for axis, values in axes.items():
        if axis not in AXIS_KEYS:
            raise _error(path, f"unknown axis 'axes.{axis}'; valid: {', '.join(AXIS_KEYS)}")
        if not isinstance(values, list) or not values:
            raise _error(path, f"'axes.{axis}' must be a non-empty list")
        bad = [v for v in values if isinstance(v, (dict, list)) or v is None]
        if bad:
            raise _error(path, f"'axes.{axis}' values must be names or numbers, got {bad[0]!r}")
    variants = data.get("variants") or {}
    for value in axes.get("variant", []):
        if value not in variants:
            raise _error(path, f"variant '{value}' in axes.variant has no entry under 'variants'")
        if variants[value] is not None and not isinstance(variants[value], dict):
            raise _error(path, f"variants.{value} must map dotted keys to values, got {variants[value]!r}")
    for key in ("rules", "exclude"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise _error(path, f"'{key}' must be a list, got {type(data[key]).__name__}")
    for i, rule in enumerate(data.get("rules") or []):
        if not isinstance(rule, dict) or "when" not in rule or not set(rule) - {"when"} \
                or not set(rule) <= {"when", "set", "base"}:
            raise _error(path, f"rules[{i}] must have the key 'when' and one or both of 'set' and 'base'")
        if "set" in rule and not isinstance(rule["set"], dict):
            raise _error(path, f"rules[{i}].set must map dotted keys to values, got {rule['set']!r}")
        if "base" in rule and not (path.parent / str(rule["base"])).is_file():
            raise _error(path, f"rules[{i}].base: run config {path.parent / str(rule['base'])} not found")
        _check_cell_keys(path, f"rules[{i}].when", rule["when"], axes)
    for i, cell in enumerate(data.get("exclude") or []):
        _check_cell_keys(path, f"exclude[{i}]", cell, axes)
    data["_path"] = path
    return data


def _check_cell_keys(path: Path, where: str, cell: Any, axes: dict) -> None:
    if not isinstance(cell, dict):
        raise _error(path, f"{where} must map axis names to values")
    for axis, value in cell.items():
        if axis not in axes:
            raise _error(path, f"{where}.{axis}: not an axis of this experiment ({', '.join(axes)})")
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v not in axes[axis]]
        if bad:
            raise _error(path, f"{where}.{axis}: value(s) {bad} are not in axes.{axis} {axes[axis]}")


def _matches(cell: dict, pattern: dict) -> bool:
    for k, v in pattern.items():   # runs cells x exclude rules times: a plain loop
        if not (cell[k] in v if isinstance(v, list) else cell[k] == v):
            return False
    return True


def parse_filters(only: list[str] | None, seeds: str | None) -> dict[str, list[str]]:
    """``--only backbone=point_mae,dataset=pb`` and ``--seeds 0-4`` -> {axis: [values]}."""
    filters: dict[str, list[str]] = {}
    for item in only or []:
        for part in filter(None, (p.strip() for p in item.split(","))):
            if "=" not in part:
                raise ConfigError(f"--only expects AXIS=VALUE[,AXIS=VALUE...], got {part!r}")
            axis, value = (s.strip() for s in part.split("=", 1))
            if axis not in AXIS_KEYS:
                raise ConfigError(f"--only: unknown axis {axis!r}; valid: {', '.join(AXIS_KEYS)}")
            filters.setdefault(axis, []).append(value)
    if seeds:
        out = []
        for part in seeds.split(","):
            lo, _, hi = part.partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                raise ConfigError(f"--seeds expects ranges like 0-4 or 0,2,5, got {seeds!r}") from None
            if last < first:
                raise ConfigError(f"--seeds: range {part!r} is empty (write the lower seed first, e.g. 0-4)")
            out += [str(s) for s in range(first, last + 1)]
        filters["seed"] = out
    return filters


def expand(path: str | Path, filters: dict[str, list[str]] | None = None,
           runs_dir: str | Path | None = None) -> list[RunSpec]:
    """All run specs of an experiment (optionally filtered), in axis order."""
    exp = load_experiment(path)
    path = exp["_path"]
    axes: dict[str, list] = exp["axes"]
    for axis, wanted in (filters or {}).items():
        if axis not in axes:
            raise ConfigError(f"filter on axis {axis!r}, which {path} does not have ({', '.join(axes)})")
        valid = {str(v) for v in axes[axis]}
        bad = sorted(set(wanted) - valid)
        if bad:
            raise ConfigError(f"filter {axis}={','.join(bad)}: not in {path} axes.{axis} {axes[axis]}")
    with fingerprint.one_pass():
        return _expand(exp, path, axes, filters, runs_dir)


def _expand(exp: dict, path: Path, axes: dict, filters: dict | None, runs_dir) -> list[RunSpec]:
    bases: dict[str, Any] = {}

    def base_for(cell: dict) -> Any:
        name = exp["base"]
        for rule in exp.get("rules") or []:
            if "base" in rule and _matches(cell, rule["when"]):
                name = rule["base"]
        if name not in bases:
            bases[name] = run_config.load_yaml(path.parent / name)
        return bases[name]

    specs = []
    names = list(axes)
    for values in itertools.product(*(axes[a] for a in names)):
        cell = dict(zip(names, values))
        if any(_matches(cell, ex) for ex in exp.get("exclude") or []):
            continue
        if filters and not all(str(cell[a]) in w for a, w in filters.items()):
            continue
        overrides: dict[str, Any] = dict(exp.get("set") or {})
        for axis, value in cell.items():
            if AXIS_KEYS[axis]:
                overrides[AXIS_KEYS[axis]] = value
        if "variant" in cell:
            overrides.update(exp["variants"][cell["variant"]] or {})
        for rule in exp.get("rules") or []:
            if _matches(cell, rule["when"]):
                overrides.update(rule.get("set") or {})
        if runs_dir is not None:
            overrides["output.runs_dir"] = str(runs_dir)
        overrides["experiment"] = exp["name"]
        overrides["variant"] = cell.get("variant", "")
        cfg = run_config.resolve(base_for(cell), overrides, source=str(path))
        specs.append(RunSpec(run_config.run_id(cfg), exp["name"], cell, run_config.to_dict(cfg), setup_id(cfg)))
    return specs


# ----------------------------------------------------------------------------- run states

def run_path(spec: RunSpec) -> Path:
    return run_config.resolve_path(spec.config["output"]["runs_dir"]) / spec.run_id


def read_json_object(path: Path) -> tuple[dict | None, str | None]:
    """(the JSON object in ``path``, None), (None, None) when there is no file, or (None, a
    one-line problem naming the file) when it cannot be read as a JSON object."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, f"{path}: is a directory, expected a JSON file"
    except OSError as err:
        return None, f"{path}: cannot read: {err.strerror}"
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{path}: not valid JSON ({str(err).splitlines()[0][:80]})"
    if not isinstance(data, dict):
        return None, f"{path}: expected a JSON object, got a JSON {type(data).__name__}"
    return data, None


def read_json(path: Path) -> dict | None:
    return read_json_object(path)[0]


def epochs_logged(rdir: Path) -> int:
    """Epochs with a row in metrics.csv (0 when the run has not finished one or it is unreadable)."""
    try:
        return max(0, rdir.joinpath("metrics.csv").read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def read_job(rdir: Path) -> tuple[dict | None, str | None]:
    """A run's job.json: (info, problem); info is None without a usable job id."""
    job, problem = read_json_object(rdir / "job.json")
    if job is not None and not (isinstance(job.get("job_id"), (str, int)) and str(job["job_id"])):
        return None, f"{rdir / 'job.json'}: no 'job_id' (expected the id submit wrote)"
    return job, problem


@dataclass(frozen=True)
class RunState:
    """Where one run stands: from its record, its checkpoint and its last submitted job."""

    state: str            # done | failed | running | pending | resumable | not started | bad record
    detail: str = ""
    job: dict | None = None
    log: Path | None = None           # the job's submitit log, when it died without a record
    log_tail: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()    # unreadable files (named), reported by status

    @property
    def needs_submission(self) -> bool:
        return self.state in ("failed", "resumable", "not started")


def run_states(specs: list[RunSpec], ask=None) -> list[RunState]:
    """Classify every run; ``ask(list of job.json dicts) -> {job id: state}`` is called once
    for all of them (``harness.jobs.scheduler_states``: batched squeue / sacct)."""
    folders = [run_path(s) for s in specs]
    jobs = [read_job(f) for f in folders]
    infos = [j for j, _ in jobs if j is not None]
    states = ask(infos) if (ask and infos) else {}
    return [_classify(spec, rdir, job, job_problem, states)
            for spec, rdir, (job, job_problem) in zip(specs, folders, jobs)]


def run_state(spec: RunSpec, ask=None) -> RunState:
    return run_states([spec], ask)[0]


def _classify(spec: RunSpec, rdir: Path, job: dict | None, job_problem: str | None, states: dict) -> RunState:
    from harness import jobs as job_logs

    problems = (job_problem,) if job_problem else ()
    record, problem = read_json_object(rdir / "result.json")
    if record is not None:
        from harness.results.records import check_record
        problem = check_record(record, rdir / "result.json")
    if problem:
        return RunState("bad record", problem, job, problems=problems + (problem,))
    progress = f"epoch {epochs_logged(rdir)}/{spec.config['schedule']['epochs']}"
    if record and record.get("status") == "done" and record.get("config_hash") == run_config.config_hash(
            run_config.config_from_dict(spec.config)):
        t = record.get("compute_time_s", record.get("wall_time_s"))
        return RunState("done", f"{t:.0f} s" if isinstance(t, (int, float)) else "", job, problems=problems)
    sched = states.get(str(job["job_id"])) if job else None
    if sched in ("PENDING", "REQUEUED", "CONFIGURING"):
        return RunState("pending", f"job {job['job_id']}", job, problems=problems)
    if job_logs.is_alive(sched):
        return RunState("running", f"job {job['job_id']} {sched.lower()}, {progress}", job, problems=problems)
    if record and record.get("status") == "failed":
        err = record.get("error") if isinstance(record.get("error"), dict) else {"message": record.get("error")}
        first = (str(err.get("message", "")).splitlines() or [""])[0]
        return RunState("failed", f"{err.get('type', 'error')}: {first}"[:160], job, problems=problems)
    if job and sched is not None:
        # the job ended (or the scheduler lost it) and the run wrote no record: it died
        log, tail = job_logs.job_log(job)
        tail = tuple(tail)
        last = tail[-1][:120] if tail else "no log lines"
        return RunState("failed", f"died without a record: scheduler {sched} (job {job['job_id']}), "
                        f"{progress}; {last}", job, log, tail, problems)
    if (rdir / "checkpoint.pt").is_file():
        return RunState("resumable", progress, job, problems=problems)
    return RunState("not started", "", job, problems=problems)
