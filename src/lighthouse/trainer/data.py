"""Byte-level data: documents from local files, packed into fixed-length windows.

Sources
  - "stdlib": the Python standard library's own `.py` files found on this machine (sorted by
    path, site-packages skipped): real text that needs no download, read lazily at run time.
  - "files": plain text (one file = one document), JSONL (one document per line, in a
    `text` field) and Parquet (one document per row of a `text` column), by file suffix.

Every document becomes its UTF-8 bytes (ids 0..255) followed by `EOD_ID`. Empty,
unreadable and non-UTF-8 files (and JSONL lines or Parquet rows that are not documents)
are skipped and counted in `DataStats`, never raised mid-run.

Split: a document is held out for validation when a hash of its name (file name plus its
index inside the file) falls below `val_fraction`; the split does not depend on the seed.

Order: the training stream visits files in a random order drawn from (seed, epoch), each
file's documents in file order, and packs them back to back into windows of `seq_len + 1`
tokens (inputs and next-token targets) that advance by `seq_len`. The stream's position
(epoch, file, document, offset) is all a checkpoint needs to continue exactly
(`PackedWindows.state_dict`).

Legend: B windows in a batch, N window length (seq_len).
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import logging
import os
import random
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..model import EOD_ID

log = logging.getLogger("lighthouse.data")

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class DataError(RuntimeError):
    """The data cannot feed a run at all (no files, no usable documents): raised at start-up."""


# ---- bookkeeping of skipped input -----------------------------------------------------------
@dataclass
class DataStats:
    """Counts of skipped input, each file or record counted once however often it is met."""

    counts: dict = field(default_factory=lambda: collections.Counter())
    seen: set = field(default_factory=set)
    warn_limit: int = 5  # warn individually for the first few, then only count

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        if (reason, where) in self.seen:
            return
        self.seen.add((reason, where))
        self.counts[reason] += 1
        total = sum(self.counts.values())
        if reason != "empty" and total <= self.warn_limit:
            log.warning("skipping %s (%s%s) [%d skipped so far]", where, reason, f": {detail}" if detail else "", total)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no input skipped"
        parts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} inputs ({parts})"


# ---- file lists --------------------------------------------------------------------------------
@dataclass
class SourceFile:
    path: Path
    name: str  # stable name used for the validation split (relative to its root)
    kind: str  # "text" | "jsonl" | "parquet"


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[SourceFile]:
    """The standard library's `.py` files, sorted by relative path, site-packages skipped."""
    root = Path(root or stdlib_root())
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                p = Path(dirpath) / fn
                found.append(SourceFile(p, p.relative_to(root).as_posix(), "text"))
    found.sort(key=lambda f: f.name)
    return found


def expand_paths(paths: list[str]) -> list[SourceFile]:
    """Files, directories (recursively, sorted) and glob patterns, in the order given."""
    out: list[SourceFile] = []
    seen = set()
    for entry in paths:
        matches = sorted(glob.glob(entry, recursive=True)) if glob.has_magic(entry) else [entry]
        if not matches or not all(os.path.lexists(m) for m in matches):
            raise DataError(f"data.paths: no such file or directory: {entry}")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                items = []
                for dirpath, dirnames, filenames in os.walk(p):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
                    for fn in filenames:
                        if not fn.startswith("."):
                            f = Path(dirpath) / fn
                            items.append((f.relative_to(p).as_posix(), f))
                named = [(f"{p.name}/{rel}", f) for rel, f in sorted(items)]
            else:
                named = [(p.name if not glob.has_magic(entry) else m, p)]
            for name, f in named:
                key = os.path.abspath(f)
                if key not in seen:
                    seen.add(key)
                    out.append(SourceFile(f, name, file_kind(f)))
    return out


def cap_bytes(files: list[SourceFile], max_bytes: int, stats: DataStats | None = None) -> list[SourceFile]:
    """The leading files whose sizes add up to at most `max_bytes` (at least one file)."""
    if max_bytes <= 0:
        return files
    kept, total = [], 0
    for f in files:
        try:
            size = f.path.stat().st_size
        except OSError as e:
            if stats is not None:
                stats.skip("unreadable", f.name, str(e))
            continue
        if kept and total + size > max_bytes:
            break
        kept.append(f)
        total += size
    return kept


# ---- documents -------------------------------------------------------------------------------
def doc_is_val(name: str, doc_idx: int, val_fraction: float) -> bool:
    h = hashlib.blake2b(f"{name}#{doc_idx}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64 < val_fraction


def encode(data: bytes) -> np.ndarray:
    """Bytes -> ids [len + 1] with the end-of-document id appended."""
    ids = np.empty(len(data) + 1, dtype=np.int64)
    ids[:-1] = np.frombuffer(data, dtype=np.uint8)
    ids[-1] = EOD_ID
    return ids


def decode(ids) -> str:
    """Ids -> text (special ids dropped, invalid UTF-8 replaced); for looking at samples."""
    return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


def iter_file_docs(
    f: SourceFile, start: int, keep: Callable[[int], bool], text_field: str, stats: DataStats
) -> Iterator[tuple[int, bytes | None]]:
    """Yield (doc_idx, utf-8 bytes or None) for documents from index `start` on.

    None marks a document that is skipped (held out by `keep`, empty or invalid), so that the
    caller's position still advances. Never raises for bad input: it is counted in `stats`.
    """
    try:
        if f.kind == "text":
            yield from _text_docs(f, start, keep, stats)
        elif f.kind == "jsonl":
            yield from _jsonl_docs(f, start, keep, text_field, stats)
        else:
            yield from _parquet_docs(f, start, keep, text_field, stats)
    except OSError as e:  # vanished or unreadable mid-file
        stats.skip("unreadable", f.name, str(e))


def _valid_text(data: bytes, where: str, stats: DataStats) -> bytes | None:
    if not data.strip():
        stats.skip("empty", where)
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.skip("not_utf8", where, str(e))
        return None
    return data


def _text_docs(f, start, keep, stats):
    if start > 0 or not keep(0):
        return
    try:
        data = f.path.read_bytes()
    except OSError as e:
        stats.skip("unreadable", f.name, str(e))
        return
    yield 0, _valid_text(data, f.name, stats)


def _jsonl_docs(f, start, keep, text_field, stats):
    with open(f.path, "rb") as fh:
        for idx, line in enumerate(fh):
            if idx < start:
                continue
            if not keep(idx) or not line.strip():
                yield idx, None
                continue
            where = f"{f.name}:{idx + 1}"
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                stats.skip("not_utf8", where, str(e))
                yield idx, None
                continue
            except ValueError as e:
                stats.skip("bad_record", where, f"invalid JSON: {e}")
                yield idx, None
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                stats.skip("bad_record", where, f"no string field {text_field!r}")
                yield idx, None
                continue
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:  # lone surrogates from \ud800 escapes
                stats.skip("not_utf8", where, str(e))
                yield idx, None
                continue
            yield idx, _valid_text(data, where, stats)


def _parquet_docs(f, start, keep, text_field, stats):
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f.path)
        if text_field not in pf.schema_arrow.names:
            stats.skip("bad_record", f.name, f"no column {text_field!r}")
            return
        batches = pf.iter_batches(batch_size=1024, columns=[text_field])
        idx = 0
        for batch in batches:
            column = batch.column(0)
            if idx + len(column) <= start:
                idx += len(column)
                continue
            for value in column.to_pylist():
                if idx >= start:
                    if not keep(idx):
                        yield idx, None
                    elif not isinstance(value, str):
                        if value is not None:
                            stats.skip("bad_record", f"{f.name}:row {idx}", f"{text_field!r} is not a string")
                        else:
                            stats.skip("empty", f"{f.name}:row {idx}")
                        yield idx, None
                    else:
                        yield idx, _valid_text(value.encode("utf-8", "surrogatepass"), f"{f.name}:row {idx}", stats)
                idx += 1
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'lighthouse[train]'") from None
    except OSError:
        raise
    except Exception as e:  # corrupt file: pyarrow raises ArrowInvalid (a ValueError) and friends
        stats.skip("unreadable", f.name, f"{type(e).__name__}: {e}")


# ---- streams -----------------------------------------------------------------------------------
class DocStream:
    """The documents of one split in a deterministic order, with a seekable position.

    Position (epoch, file_pos, doc_idx): the next document to try is number `doc_idx` of the
    file at place `file_pos` in epoch `epoch`'s file order.
    """

    def __init__(self, files, split: str, val_fraction: float, seed: int, text_field="text", stats=None, epochs=None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val, got {split!r}")
        if not files:
            raise DataError("no input files")
        self.files, self.split, self.val_fraction = files, split, val_fraction
        self.seed, self.text_field = seed, text_field
        self.stats = stats if stats is not None else DataStats()
        self.epochs = epochs  # None: cycle forever; else stop (StopIteration) after this many
        self._orders: dict[int, list[int]] = {}
        self.seek((0, 0, 0))

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            perm = list(range(len(self.files)))
            random.Random(f"lighthouse-data/{self.split}/{self.seed}/{epoch}").shuffle(perm)
            self._orders = {epoch: perm}
        return self._orders[epoch]

    @property
    def position(self) -> tuple[int, int, int]:
        return self._pos

    def seek(self, pos) -> None:
        self._pos = tuple(int(x) for x in pos)
        self._gen = None
        # Mid-epoch, earlier documents of this epoch exist; emptiness is judged on a whole epoch.
        self._yielded_in_epoch = self._pos[1:] != (0, 0)

    def _keep(self, name: str) -> Callable[[int], bool]:
        want_val = self.split == "val"
        return lambda idx: doc_is_val(name, idx, self.val_fraction) == want_val

    def next_doc(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """(position of the document, its ids with EOD appended)."""
        while True:
            epoch, file_pos, doc_idx = self._pos
            if file_pos >= len(self.files):
                if not self._yielded_in_epoch and file_pos == len(self.files) and doc_idx == 0:
                    raise DataError(
                        f"no usable documents in the {self.split} split of {len(self.files)} files "
                        f"({self.stats.summary()}); check data.paths, data.text_field and data.val_fraction"
                    )
                if self.epochs is not None and epoch + 1 >= self.epochs:
                    raise StopIteration
                self._pos, self._gen, self._yielded_in_epoch = (epoch + 1, 0, 0), None, False
                continue
            f = self.files[self.order(epoch)[file_pos]]
            if self._gen is None:
                self._gen = iter_file_docs(f, doc_idx, self._keep(f.name), self.text_field, self.stats)
            item = next(self._gen, None)
            if item is None:
                self._pos, self._gen = (epoch, file_pos + 1, 0), None
                continue
            idx, data = item
            self._pos = (epoch, file_pos, idx + 1)
            if data is not None:
                self._yielded_in_epoch = True
                return (epoch, file_pos, idx), encode(data)


class PackedWindows:
    """Back-to-back documents cut into windows of seq_len + 1 ids that advance by seq_len."""

    def __init__(self, docs: DocStream, seq_len: int):
        self.docs, self.seq_len = docs, seq_len
        self._queue: collections.deque = collections.deque()  # (position, ids) of documents in reach
        self._offset = 0  # where the next window starts inside the first queued document
        self.windows = 0

    def next_window(self) -> np.ndarray:
        need = self.seq_len + 1
        while sum(len(ids) for _, ids in self._queue) - self._offset < need:
            self._queue.append(self.docs.next_doc())
        parts, off, left = [], self._offset, need
        for _, ids in self._queue:
            take = ids[off : off + left]
            parts.append(take)
            left -= len(take)
            off = 0
            if left == 0:
                break
        advance = self.seq_len
        while advance:
            ids = self._queue[0][1]
            rest = len(ids) - self._offset
            if advance >= rest:
                advance -= rest
                self._queue.popleft()
                self._offset = 0
            else:
                self._offset += advance
                advance = 0
        self.windows += 1
        return np.concatenate(parts)

    def next_batch(self, n: int) -> torch.Tensor:
        """[n, seq_len + 1] int64: inputs are [:, :-1], targets [:, 1:]."""
        return torch.from_numpy(np.stack([self.next_window() for _ in range(n)]))

    def state_dict(self) -> dict:
        pos = self._queue[0][0] if self._queue else self.docs.position
        return {"position": list(pos), "offset": self._offset, "windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        self._queue.clear()
        self.docs.seek(state["position"])
        self._offset = int(state["offset"])
        self.windows = int(state["windows"])


# ---- the whole data setup of a run ----------------------------------------------------------------
class ByteData:
    """Training stream and fixed validation windows for a `DataConfig`."""

    def __init__(self, data_cfg, seed: int):
        self.cfg = data_cfg
        self.stats = DataStats()
        if data_cfg.source == "stdlib":
            files = stdlib_files()
            if not files:
                raise DataError(f"no .py files found under the standard library at {stdlib_root()}")
        else:
            files = expand_paths(list(data_cfg.paths))
            if not files:
                raise DataError(f"data.paths {data_cfg.paths} matched no files")
        self.files = cap_bytes(files, data_cfg.max_bytes, self.stats)
        self.train_docs = DocStream(self.files, "train", data_cfg.val_fraction, seed, data_cfg.text_field, self.stats)
        self.train = PackedWindows(self.train_docs, data_cfg.seq_len)
        self._val: torch.Tensor | None = None

    def val_windows(self) -> torch.Tensor:
        """The held-out windows [val_windows, seq_len + 1] (the same every time and every seed)."""
        if self._val is None:
            docs = DocStream(self.files, "val", self.cfg.val_fraction, 0, self.cfg.text_field, self.stats, epochs=1)
            packer = PackedWindows(docs, self.cfg.seq_len)
            rows = []
            try:
                for _ in range(self.cfg.val_windows):
                    rows.append(packer.next_window())
            except StopIteration:
                pass
            if not rows:
                raise DataError(
                    f"the validation split is shorter than one window of data.seq_len + 1 = {self.cfg.seq_len + 1} "
                    "ids; raise data.val_fraction or add data"
                )
            self._val = torch.from_numpy(np.stack(rows))
        return self._val

    def state_dict(self) -> dict:
        return {"train": self.train.state_dict(), "stats": dict(self.stats.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.train.load_state_dict(state["train"])
        for reason, n in state.get("stats", {}).items():
            self.stats.counts[reason] = max(self.stats.counts[reason], int(n))
