"""``tables.record_row`` straight from a record's bytes, for the common record: a done record
that ``records.check_record`` passes in its one-pass check (schema 2, the expected types).

msgspec decodes only the fields a row needs, typed as that check demands, and skips the rest
(the config, data, packages) without building them: about a third of a full parse's time for a
record of a real one's size. Whatever it cannot vouch for (a wrong type, a missing field, text
it does not check, a number a full parse would read otherwise) gives None, and the caller
(``records.load_records_and_rows``) parses the file whole. Imported only there, by ``tables``
with its row cache: training and the rest of the package do not need msgspec.
"""
from __future__ import annotations

from typing import Annotated, Optional, Union

import msgspec

from harness.results.records import DATA_SOURCES, SCHEMA_VERSION

# What a full parse gives back as it is, and the row cache keeps (``rowcache.keeps``), checked by
# msgspec while it decodes: integers within 64 bits (signed: msgspec's bounds are int64's;
# larger ones fail here and take the full parse), floats (msgspec refuses an out-of-range number
# such as 1e400, so none is infinite, and JSON has no NaN), strings (msgspec refuses a lone
# surrogate).
_Int = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_Number = Union[_Int, float, None]
_NULL = msgspec.Raw(b"null")


class _Metrics(msgspec.Struct):
    acc_last: _Number = None
    acc_best_test: _Number = None
    acc_best_val: _Number = None
    acc_vote: _Number = None


class _Params(msgspec.Struct):
    trainable: _Number = None


class _DoneRecord(msgspec.Struct):
    schema: _Int
    status: str
    run_id: str
    setup_id: str
    backbone: str
    method: str
    dataset: str
    variant: Optional[str]          # required, may be null
    data_source: str
    seed: _Int
    metrics: _Metrics
    params: Optional[_Params] = None
    data: msgspec.Raw = _NULL        # an object or null: only its first byte is looked at
    pretrained: msgspec.Raw = _NULL
    wall_time_s: _Number = None
    compute_time_s: Union[_Int, float, None, msgspec.UnsetType] = msgspec.UNSET   # absent: wall time
    seconds_per_epoch: _Number = None
    peak_memory_bytes: _Number = None
    epochs: _Number = None
    gpu_hours: _Number = None
    end_time: Optional[str] = None


_decode_done = msgspec.json.Decoder(_DoneRecord).decode
# one object per distinct name: 100,000 rows share a few dozen setup ids, datasets, backbones,
# methods (pickled once per worker's batch, not once per row: less for the reader to unpickle);
# emptied when it grows past NAMES_KEPT (a long-lived process reading many runs folders)
NAMES_KEPT = 100_000
_names: dict[str, str] = {}
_one = _names.setdefault


def record_row_from_json(data: bytes) -> tuple | None:
    """``tables.record_row(record)[1:]`` (the row without the record) of the record JSON ``data``
    holds, when it is a plainly good done record: schema 2, a setup id, the types
    ``check_record``'s one-pass check wants, plain ASCII (msgspec does not check the UTF-8 of the
    text it skips; the full parse does), integers within signed 64 bits and finite numbers (what a
    full parse gives back as they are, whatever the orjson version: msgspec checks them as it
    decodes; msgspec 0.18 wrapped some integers past 64 bits, hence msgspec >= 0.19). None for
    anything else, nesting deeper than msgspec decodes included: then parse the file whole
    (``records.load_records_and_rows``), which names what is wrong."""
    if not data.isascii():
        return None
    if len(_names) > NAMES_KEPT:
        _names.clear()
    try:
        r = _decode_done(data)
    except (msgspec.DecodeError, RecursionError):   # a wrong type, a missing field; about 1,000 levels deep
        return None
    if (r.status != "done" or r.schema != SCHEMA_VERSION or not r.setup_id or r.data_source not in DATA_SOURCES
            or memoryview(r.data)[:1] not in (b"{", b"n") or memoryview(r.pretrained)[:1] not in (b"{", b"n")):
        return None
    m, p = r.metrics, r.params
    row = (_one(r.setup_id, r.setup_id), r.run_id, _one(r.dataset, r.dataset), _one(r.backbone, r.backbone),
           _one(r.method, r.method), r.variant or "", _one(r.data_source, r.data_source), r.seed,
           m.acc_last, m.acc_best_test, m.acc_best_val, m.acc_vote, None if p is None else p.trainable,
           r.wall_time_s if r.compute_time_s is msgspec.UNSET else r.compute_time_s, r.seconds_per_epoch,
           r.peak_memory_bytes, r.gpu_hours, r.end_time or "")
    return row
