"""What a run trained on: a content fingerprint of its data folder and the sha256 of its weights.

Both go into the resolved config (``data.fingerprint``, ``model.pretrained_sha256``), so the
config hash, the run id and the setup id identify the data and the weights, not their paths:
moving a dataset keeps finished runs finished, other content makes new runs.

Data fingerprint (16 hex chars of a sha256) over every file under the root, in sorted
relative-path order (hidden files and ``*.tmp`` left out):
- each file's relative path and size in bytes;
- a content digest of each file: the whole file up to 8 MiB, else its first, middle and last
  MiB. In trees of more than ``BULK_FILES`` files (ModelNet40's 12,311 per-shape txt files)
  only the top-level files (split lists, ``.dat`` caches) get a digest; the shape files count
  by name and size, which keeps a fingerprint of ModelNet40 to one stat per file.
A missing root fingerprints as ``"missing"``. File digests are memoised by path, size, mtime
and inode; inside ``with one_pass():`` (what ``harness.matrix.expand`` uses) each tree is also
walked once, so expanding a matrix of 1,000 runs stats each dataset's files once.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

MISSING = "missing"
FULL_DIGEST_BYTES = 8 << 20
SAMPLE_BYTES = 1 << 20
BULK_FILES = 256

_digests: dict[tuple, str] = {}
_trees: dict[str, str] | None = None    # root -> fingerprint, only inside one_pass()


@contextlib.contextmanager
def one_pass():
    """Within this block each data root is walked once (its files must not change meanwhile)."""
    global _trees
    outer = _trees
    _trees = {} if outer is None else outer
    try:
        yield
    finally:
        _trees = outer


def _walk(root: Path) -> list[tuple[str, os.stat_result, bool]]:
    """(relative path, stat, at top level) of every data file under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        top = Path(dirpath) == root
        for name in filenames:
            if name.startswith(".") or name.endswith(".tmp"):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path.relative_to(root).as_posix(), st, top))
    out.sort(key=lambda item: item[0])
    return out


def file_digest(path: Path, st: os.stat_result | None = None) -> str:
    """sha256 hex of the file (up to 8 MiB) or of its first, middle and last MiB."""
    st = st or path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= FULL_DIGEST_BYTES:
                while block := f.read(SAMPLE_BYTES):
                    h.update(block)
            else:
                for offset in (0, st.st_size // 2, st.st_size - SAMPLE_BYTES):
                    f.seek(offset)
                    h.update(f.read(SAMPLE_BYTES))
        _digests[key] = h.hexdigest()
    return _digests[key]


def data_fingerprint(root: str | Path) -> str:
    """16-hex fingerprint of the data under ``root`` (see the module doc), or ``"missing"``."""
    root = Path(root)
    if not root.is_dir():
        return MISSING
    key = str(root.resolve())
    if _trees is not None and key in _trees:
        return _trees[key]
    files = _walk(root)
    bulk = len(files) > BULK_FILES
    h = hashlib.sha256()
    for rel, st, at_top in files:
        digest = file_digest(root / rel, st) if (at_top or not bulk) else ""
        h.update(f"{rel}\0{st.st_size}\0{digest}\n".encode())
    value = h.hexdigest()[:16]
    if _trees is not None:
        _trees[key] = value
    return value


def weights_sha256(path: str | Path | None) -> str | None:
    """Full sha256 hex of a checkpoint file (memoised by path, size, mtime, inode); ``None``
    without a file configured, ``"missing"`` when the file is not there."""
    if path is None:
        return None
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return MISSING
    key = ("sha256", str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        from models.checkpoints import file_sha256
        _digests[key] = file_sha256(path)
    return _digests[key]
