"""``fastrow.record_row_from_json``: the row of a plainly good done record straight from its bytes
(msgspec, the config and the rest skipped) is exactly the row a full parse and check gives, and
anything it cannot vouch for (a bad file, an odd type, text msgspec would not check) is left to
the full parse, which names what is wrong."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from harness.bench.tooling_cases import synthetic_record
from harness.results import RECORD_FIELDS, fastrow, tables
from harness.results import records as records_mod
from tests.test_tables_golden import write_golden_runs


def _full(data: bytes) -> tuple | None:
    """The row minus the record of a full parse and check; None unless a good done record."""
    record, problem = records_mod._checked(*records_mod._parsed(data, "x"), "x")
    if problem or record["status"] != "done":
        return None
    return tables.record_row(record)[1:]


def _typed(row):
    return [(type(v), v) for v in row]


def _agrees(data: bytes) -> bool:
    """The shortcut gives up, or gives what the full path gives, value and type alike."""
    fast = fastrow.record_row_from_json(data)
    if fast is None:
        return True
    full = _full(data)
    assert full is not None, data[:200]
    assert _typed(fast) == _typed(full), data[:200]
    return False


def _base() -> dict:
    return synthetic_record(5, random.Random(0), tuple(RECORD_FIELDS))


def test_the_shortcut_reads_common_records_as_a_full_parse_does(tmp_path):
    write_golden_runs(tmp_path)
    golden = [p.read_bytes() for p in tmp_path.glob("*/result.json") if p.is_file()]
    rng = random.Random(1)
    synthetic = [json.dumps(synthetic_record(i, rng, tuple(RECORD_FIELDS))).encode() for i in range(300)]
    used = sum(not _agrees(data) for data in golden + synthetic)
    done = sum(_full(data) is not None for data in golden + synthetic)
    # the shortcut is taken for most good done records (not for schema-1 ones: no setup id)
    assert used > 0.8 * done > 100, (used, done)


ODD = [None, True, False, 0, 1, -1, 1.0, 0.5, -0.0, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, -2 ** 63,
       -2 ** 63 - 1, 2 ** 70, 19512560043986563408, 2 ** 65 + 1, 1e308, "", "x", "é", "\ud800", [], [1], {}, {"a": 1}]
TOP = ["schema", "status", "run_id", "setup_id", "backbone", "method", "dataset", "variant", "data_source",
       "seed", "metrics", "params", "data", "pretrained", "wall_time_s", "compute_time_s", "seconds_per_epoch",
       "peak_memory_bytes", "epochs", "gpu_hours", "end_time", "error", "config"]


def _encodings(record: dict) -> list[bytes]:
    out = []
    for ascii_only in (True, False):
        try:
            out.append(json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
        except ValueError:   # a value JSON cannot write
            pass
    return out


def test_every_odd_value_of_every_field_is_read_alike_or_left_to_the_full_parse():
    base = _base()
    assert fastrow.record_row_from_json(json.dumps(base).encode()) is not None
    cases = 0
    for key in TOP:
        for value in ODD + [...]:
            rec = json.loads(json.dumps(base))
            if value is ...:
                rec.pop(key, None)
            else:
                rec[key] = value
            for data in _encodings(rec):
                _agrees(data)
                cases += 1
    for key in ("acc_last", "acc_best_test", "acc_best_val", "acc_vote", "best_test_epoch"):
        for value in ODD + [...]:
            rec = json.loads(json.dumps(base))
            if value is ...:
                rec["metrics"].pop(key, None)
            else:
                rec["metrics"][key] = value
            for data in _encodings(rec):
                _agrees(data)
                cases += 1
    for value in ODD + [...]:
        rec = json.loads(json.dumps(base))
        if value is ...:
            rec["params"].pop("trainable")
        else:
            rec["params"]["trainable"] = value
        for data in _encodings(rec):
            _agrees(data)
            cases += 1
    assert cases > 1500


def test_text_the_full_parse_refuses_or_reads_otherwise_is_never_taken_by_the_shortcut():
    good = json.dumps(_base()).encode()
    assert fastrow.record_row_from_json(good) is not None
    at = good.index(b'"experiment": "bench-tables"')
    odd = {
        "invalid utf-8 in a skipped field": good[:at] + b'"zz": "\xff\xfe", ' + good[at:],
        "an overlong utf-8 form": good[:at] + b'"zz": "\xc0\x80", ' + good[at:],
        "an encoded surrogate": good[:at] + b'"zz": "\xed\xa0\x80", ' + good[at:],
        "a lone surrogate escape": good[:at] + b'"zz": "\\ud800", ' + good[at:],
        "NaN in a skipped field": good[:at] + b'"zz": NaN, ' + good[at:],
        "an overflowing number in a skipped field": good[:at] + b'"zz": 1e999, ' + good[at:],
        "a byte-order mark": b"\xef\xbb\xbf" + good,
        "trailing text": good + b" x",
        "a trailing comma": good[:-1] + b", }",
        "a duplicate key (the last wins)": good[:-1] + b', "seed": 77}',
        "a duplicate status": good[:-1] + b', "status": "failed"}',
        "a duplicate metric": good.replace(b'"metrics": {', b'"metrics": {"acc_last": 1.5, ', 1),
        "whitespace everywhere": good.replace(b": ", b" :\n\t ").replace(b", ", b" ,\r\n "),
        "a big exponent": good.replace(b'"epochs": 301', b'"epochs": 3.01e2'),
        "a signed 64-bit seed": good.replace(b'"seed": 0', b'"seed": -9223372036854775808'),
        "an unsigned 64-bit seed": good.replace(b'"seed": 0', b'"seed": 18446744073709551615'),
        "a seed past 64 bits": good.replace(b'"seed": 0', b'"seed": 18446744073709551616'),
        "a negative zero accuracy": good.replace(b'"acc_best_val": null', b'"acc_best_val": -0.0'),
        "escapes in the run id": good.replace(b'"run_id": "', b'"run_id": "\\u0061\\n\\/', 1),
        "data as a string": good.replace(b'"data": {', b'"data": "x", "zz": {', 1),
        "pretrained as a list": good.replace(b'"pretrained": {', b'"pretrained": [1], "zz": {', 1),
        "a JSON array": b"[" + good + b"]",
        "empty": b"",
    }
    for name, data in odd.items():
        assert b'"seed": 0' in good and (name == "empty" or data != good), name
        _agrees(data)
    taken = {name for name, data in odd.items() if fastrow.record_row_from_json(data) is not None}
    # read by the shortcut, exactly as a full parse reads them (checked above); the rest are left
    # (an integer past int64's range, though a full parse keeps it, to the full parse: msgspec's bounds)
    assert taken == {"a duplicate key (the last wins)", "a duplicate metric", "whitespace everywhere",
                     "a big exponent", "a signed 64-bit seed", "a negative zero accuracy", "escapes in the run id",
                     "an overflowing number in a skipped field"}, taken


def _nested(depth: int) -> bytes:
    good = json.dumps(_base()).encode()
    return good[:-1] + b', "zz": ' + b"[" * depth + b"]" * depth + b"}"


def test_deep_nesting_is_left_to_the_full_parse_which_reads_it_or_names_the_file(tmp_path):
    # msgspec stops at about 1,000 levels even in a field it skips; orjson reads up to 1,023
    assert fastrow.record_row_from_json(_nested(1000)) is None
    assert _full(_nested(1000)) is not None
    runs = tmp_path / "runs"
    for name, depth in (("deep", 1000), ("too-deep", 5000)):
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_bytes(_nested(depth))
    for _ in range(2):   # a first run, then one from the row cache
        records, rows, problems = records_mod.load_records_and_rows(runs, tables.record_row, cache=True)
        assert len(rows) == 1 and rows[0][2] == _base()["run_id"]
        assert problems == [f"{runs / 'too-deep' / 'result.json'}: bad JSON: nested too deeply"]


def test_only_tables_imports_msgspec():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys, harness.results, harness.train; print('msgspec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_the_shared_names_are_bounded_in_a_long_lived_process(monkeypatch):
    monkeypatch.setattr(fastrow, "NAMES_KEPT", 50)
    fastrow._names.clear()
    rows = []
    for i in range(300):                     # 300 setups: more distinct names than are kept
        rec = _base()
        rec["setup_id"] = f"setup-{i}"
        data = json.dumps(rec).encode()
        assert _agrees(data) is False        # taken, and equal to the full parse
        rows.append(fastrow.record_row_from_json(data))
        assert len(fastrow._names) <= 50 + 5
    again = fastrow.record_row_from_json(json.dumps(_base() | {"setup_id": "setup-299"}).encode())
    assert again[0] is rows[-1][0]           # one object per name while it is kept
