"""Byte-level data: documents from local files, packed into fixed-length windows.

Sources
  - "stdlib": the Python standard library's own `.py` files found on this machine (sorted by
    path, site-packages skipped): real text that needs no download, read lazily at run time.
  - "site-packages": the `.py` files of the packages installed for this interpreter (its
    site-packages folders, or the folders listed in `data.paths`), read lazily at run time.
  - "files": plain text (one file = one document), JSONL (one document per line, in a
    `text` field) and Parquet (one document per row of a `text` column), by file suffix.

Documents (`data.document`): "file" makes every text file a document; "folder" makes the text
files of one folder one document, and "package" those under one top-level entry of a root
(a package of site-packages or the standard library, a sub-folder of a folder in
`data.paths`), concatenated in path order (each file starting on a new line), so documents
run to hundreds of KB. "auto" is "package" for site-packages and "file" otherwise. JSONL and
Parquet records, and files named directly or by a glob, are always documents of their own.

Every document becomes its UTF-8 bytes (ids 0..255) followed by `EOD_ID`, held whole in
memory while it is packed (2 bytes per byte). Empty, unreadable and non-UTF-8 files (and
JSONL lines or Parquet rows that are not documents) are skipped and counted in `DataStats`,
never raised mid-run.

Split (`data.val_split`), never dependent on the seed:
  - "documents": a document is held out for validation when a hash of its name (file name
    plus its index inside the file) falls below `val_fraction`.
  - "bytes": every document is cut in two: its last `val_fraction` of bytes (from the next
    UTF-8 character start) is held out, the rest trains. For a corpus of one or a few files.
  - "auto" (default): "documents", unless (judged from file sizes) the held-out documents
    would not fill the `val_windows` validation windows or the remaining ones one training
    window, then "bytes" (`choose_val_split`). A corpus with JSONL or Parquet files (many
    records) keeps "documents". `ByteData.split_description` says which split was made.

Order: the training stream visits documents (files, or folders/packages) in a random order
drawn from (seed, epoch), each file's documents in file order, and packs them back to back
into windows of `seq_len + 1` tokens (inputs and next-token targets) that advance by
`seq_len`. The stream's position (epoch, file, document, offset) is all a checkpoint needs to
continue exactly (`PackedWindows.state_dict`).

Legend: B windows in a batch, N window length (seq_len).
"""

from __future__ import annotations

import codecs
import collections
import glob
import hashlib
import json
import logging
import os
import posixpath
import random
import site
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model import EOD_ID

log = logging.getLogger("lighthouse.data")

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
DOCUMENT_MODES = ("auto", "file", "folder", "package")
VAL_SPLITS = ("auto", "documents", "bytes")
UTF8_CHECK_CHUNK = 1 << 24  # validate larger documents in pieces rather than decoding them whole


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
    # The leading part of `name` that names the folder it was found in ("" when `name` is
    # relative to that folder); None for a file named directly or by a glob. Folder and
    # package documents group files by what follows it.
    root: str | None = None


@dataclass
class FileGroup:
    """Text files read as one document (a folder or a top-level package), in path order."""

    name: str  # stable name used for the validation split
    files: list[SourceFile]
    kind: str = "group"


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
                found.append(SourceFile(p, p.relative_to(root).as_posix(), "text", root=""))
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
            root = None
            if p.is_dir():
                root = p.name
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
                    out.append(SourceFile(f, name, file_kind(f), root=root))
    return out


def site_packages_roots() -> list[Path]:
    """The folders this interpreter installs packages into (purelib, platlib, site's list)."""
    paths = sysconfig.get_paths()
    candidates = [paths["purelib"], paths["platlib"]]
    try:
        candidates += site.getsitepackages()
    except AttributeError:  # pragma: no cover - some embedded interpreters lack it
        pass
    roots, seen = [], set()
    for c in candidates:
        p = Path(c)
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            roots.append(p)
    return roots


def _skip_package_dir(name: str) -> bool:
    return (
        name.startswith(".")
        or name in SKIP_DIRS  # nested environments and byte-code caches
        or name.endswith((".dist-info", ".egg-info"))
    )


def site_packages_files(roots: list[Path] | None = None) -> list[SourceFile]:
    """The `.py` files under site-packages folders, named relative to their folder, in path order.

    A name found under two folders (a namespace package split over purelib and platlib) keeps
    both files, the first folder's first; a file reached twice (linked folders) is read once.
    """
    roots = [Path(r) for r in (site_packages_roots() if roots is None else roots)]
    for r in roots:
        if not r.is_dir():
            raise DataError(f"data.paths: site-packages folder not found: {r}")
    found, seen = [], set()
    for rank, root in enumerate(roots):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not _skip_package_dir(d))
            for fn in filenames:
                if fn.endswith(".py") and not fn.startswith("."):
                    p = Path(dirpath) / fn
                    key = os.path.realpath(p)
                    if key not in seen:
                        seen.add(key)
                        found.append((p.relative_to(root).as_posix(), rank, p))
    found.sort(key=lambda item: item[:2])
    return [SourceFile(p, name, "text", root="") for name, _, p in found]


# ---- documents made of several files -----------------------------------------------------------
def resolve_document_mode(document: str, source: str) -> str:
    if document not in DOCUMENT_MODES:
        raise DataError(f"data.document must be one of {DOCUMENT_MODES}, got {document!r}")
    if document == "auto":
        return "package" if source == "site-packages" else "file"
    return document


def document_key(f: SourceFile, document: str) -> str | None:
    """The folder or package document a file belongs to, or None for a document of its own."""
    if document == "file" or f.kind != "text" or f.root is None:
        return None
    rel = f.name[len(f.root) :].lstrip("/")  # the path below the root folder
    if document == "folder":
        parent = posixpath.dirname(rel)
    else:
        parent = rel.split("/", 1)[0] if "/" in rel else ""
        if not parent:  # a top-level module: a package of one file
            return None
    if f.root:
        return posixpath.join(f.root, parent) if parent else f.root
    return parent or "."


def group_documents(files: list[SourceFile], document: str) -> list[SourceFile | FileGroup]:
    """The stream's units: files, with those of one folder or package joined into a FileGroup.

    Units keep the order in which their first file appears; a group's files are in name order.
    With document = "file" this is `files` itself, so the order (and the data) is unchanged.
    """
    if document == "file":
        return list(files)
    units: list[SourceFile | FileGroup] = []
    groups: dict[str, FileGroup] = {}
    for f in files:
        key = document_key(f, document)
        if key is None:
            units.append(f)
        elif key in groups:
            groups[key].files.append(f)
        else:
            groups[key] = FileGroup(key, [f])
            units.append(groups[key])
    for g in groups.values():
        g.files.sort(key=lambda f: f.name)  # stable: files of the same name keep their folder order
    return units


def unit_files(unit: SourceFile | FileGroup) -> list[SourceFile]:
    return unit.files if isinstance(unit, FileGroup) else [unit]


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


def byte_split_point(data, val_fraction: float) -> int:
    """Where a document's held-out tail starts under the byte-range split.

    The last `val_fraction` of its bytes, the cut moved forward to the next UTF-8 character
    start so that both halves stay valid text: train gets [0, cut), validation [cut, len).
    """
    cut = int(len(data) * (1.0 - val_fraction))
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # continuation byte 10xxxxxx
        cut += 1
    return cut


def encode(data) -> np.ndarray:
    """Bytes -> ids [len + 1] with the end-of-document id appended.

    uint16 (ids go up to 263) keeps a long document at 2 bytes per byte in memory; windows are
    widened to int64 when they are cut from it.
    """
    ids = np.empty(len(data) + 1, dtype=np.uint16)
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
        elif f.kind == "group":
            yield from _group_docs(f, start, keep, stats)
        elif f.kind == "jsonl":
            yield from _jsonl_docs(f, start, keep, text_field, stats)
        else:
            yield from _parquet_docs(f, start, keep, text_field, stats)
    except OSError as e:  # vanished or unreadable mid-file
        stats.skip("unreadable", f.name, str(e))


def _utf8_error(data: bytes) -> str | None:
    """Why `data` is not UTF-8, or None; large data is checked in pieces (no whole copy)."""
    try:
        if len(data) <= UTF8_CHECK_CHUNK:
            data.decode("utf-8")
        else:
            decoder, view = codecs.getincrementaldecoder("utf-8")(), memoryview(data)
            for i in range(0, len(data), UTF8_CHECK_CHUNK):
                decoder.decode(view[i : i + UTF8_CHECK_CHUNK], final=False)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return str(e)
    return None


def _valid_text(data: bytes, where: str, stats: DataStats) -> bytes | None:
    if not data or data.isspace():  # same as `not data.strip()`, without the copy
        stats.skip("empty", where)
        return None
    error = _utf8_error(data)
    if error is not None:
        stats.skip("not_utf8", where, error)
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


def _group_docs(group: FileGroup, start, keep, stats):
    """One document: the group's usable files joined, each starting on a new line."""
    if start > 0 or not keep(0):
        return
    parts = []
    for f in group.files:
        try:
            data = _valid_text(f.path.read_bytes(), f.name, stats)
        except OSError as e:
            stats.skip("unreadable", f.name, str(e))
            continue
        if data is not None:
            parts.append(data if data.endswith(b"\n") else data + b"\n")
    yield 0, b"".join(parts) if parts else None


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

    `files` are the stream's units: `SourceFile`s and `FileGroup`s (folder or package
    documents). Position (epoch, file_pos, doc_idx): the next document to try is number
    `doc_idx` of the unit at place `file_pos` in epoch `epoch`'s order. `split_by` is
    "documents" (whole documents by hash of name) or "bytes" (every document's tail is held
    out, see `byte_split_point`).
    """

    def __init__(
        self, files, split: str, val_fraction: float, seed: int, text_field="text", stats=None, epochs=None,
        split_by: str = "documents",
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val, got {split!r}")
        if split_by not in ("documents", "bytes"):
            raise ValueError(f"split_by must be documents or bytes, got {split_by!r}")
        if not files:
            raise DataError("no input files")
        self.files, self.split, self.val_fraction, self.split_by = files, split, val_fraction, split_by
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
        if self.split_by == "bytes":  # every document has a part in both splits
            return lambda idx: True
        want_val = self.split == "val"
        return lambda idx: doc_is_val(name, idx, self.val_fraction) == want_val

    def _piece(self, data):
        """This split's part of a document (all of it under the whole-document split)."""
        if self.split_by == "documents":
            return data
        cut = byte_split_point(data, self.val_fraction)
        piece = memoryview(data)[cut:] if self.split == "val" else memoryview(data)[:cut]
        return piece if len(piece) else None

    def next_doc(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """(position of the document, its ids with EOD appended)."""
        while True:
            epoch, file_pos, doc_idx = self._pos
            if file_pos >= len(self.files):
                if not self._yielded_in_epoch and file_pos == len(self.files) and doc_idx == 0:
                    what = "files" if all(isinstance(u, SourceFile) for u in self.files) else "documents"
                    raise DataError(
                        f"no usable documents in the {self.split} split of {len(self.files)} {what} "
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
                data = self._piece(data)
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
        return np.concatenate(parts).astype(np.int64)

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


def _file_size(f: SourceFile) -> int:
    try:
        return f.path.stat().st_size
    except OSError:
        return 0


def _parquet_text_bytes(f: SourceFile, text_field: str) -> tuple[int, int] | None:
    """(uncompressed bytes of the text column, rows) from a Parquet footer, or None."""
    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(f.path).metadata
        col = meta.schema.to_arrow_schema().get_field_index(text_field)
        if col < 0:
            return 0, 0
        size = sum(meta.row_group(i).column(col).total_uncompressed_size for i in range(meta.num_row_groups))
        return size, meta.num_rows
    except (ImportError, OSError, ValueError, KeyError, IndexError):  # ArrowInvalid is a ValueError
        return None


def choose_val_split(
    units, val_fraction: float, seq_len: int, mode: str = "auto", val_windows: int = 1
) -> tuple[str, str]:
    """("documents" or "bytes", a sentence saying how the validation split is made).

    "auto" keeps the whole-document split when, judged from file sizes (ids = bytes + one
    end-of-document id per document), the documents it holds out fill the `val_windows`
    validation windows (val_windows * seq_len + 1 ids) and the others fill one training window
    (seq_len + 1 ids). Otherwise (a corpus of one or a few files, or of a few long documents)
    every document's tail is held out instead. Corpora with JSONL or Parquet files (records,
    many documents) keep the whole-document split.
    """
    if mode not in VAL_SPLITS:
        raise DataError(f"data.val_split must be one of {VAL_SPLITS}, got {mode!r}")
    pct = f"{100 * val_fraction:.4g}%"
    bytes_text = (
        f"by byte ranges: the last {pct} of every document's bytes (from a character boundary) is held out "
        "for validation, the rest trains"
    )
    records = any(u.kind in ("jsonl", "parquet") for u in units)
    n_val = sum(doc_is_val(u.name, 0, val_fraction) for u in units if u.kind in ("text", "group"))
    n_text = sum(u.kind in ("text", "group") for u in units)
    docs_text = (
        f"by whole documents: a document is held out for validation when a hash of its name falls below "
        f"val_fraction = {val_fraction:.4g} ({n_val} of {n_text} file/folder/package documents held out"
        + ("; JSONL/Parquet records hashed one by one" if records else "")
        + ")"
    )
    if mode == "documents":
        return "documents", docs_text
    if mode == "bytes":
        return "bytes", bytes_text + " (data.val_split = \"bytes\")"
    if records:
        return "documents", docs_text
    need = {True: val_windows * seq_len + 1, False: seq_len + 1}  # keyed by "held out"
    ids = {True: 0, False: 0}
    for u in units:
        ids[doc_is_val(u.name, 0, val_fraction)] += sum(_file_size(f) for f in unit_files(u)) + 1
        if ids[True] >= need[True] and ids[False] >= need[False]:
            return "documents", docs_text
    reason = (
        f"the whole-document split would hold out {n_val} of {n_text} documents with about {ids[True]:,} ids "
        f"(data.val_windows = {val_windows} windows need {need[True]:,}) and keep about {ids[False]:,} for training "
        f"(one window needs {need[False]:,})"
    )
    return "bytes", f"{bytes_text}, because {reason}"


# ---- the whole data setup of a run ----------------------------------------------------------------
class ByteData:
    """Training stream and fixed validation windows for a `DataConfig`.

    `split_description` says how the validation split was made; `describe()` gives the corpus
    and split sizes and the training tokens of one epoch (to check a token budget against).
    """

    def __init__(self, data_cfg, seed: int):
        self.cfg = data_cfg
        self.stats = DataStats()
        if data_cfg.source == "stdlib":
            files = stdlib_files()
            if not files:
                raise DataError(f"no .py files found under the standard library at {stdlib_root()}")
        elif data_cfg.source == "site-packages":
            roots = [Path(p) for p in data_cfg.paths] or site_packages_roots()
            files = site_packages_files(roots)
            if not files:
                raise DataError(f"no .py files found in the site-packages folders {[str(r) for r in roots]}")
        else:
            files = expand_paths(list(data_cfg.paths))
            if not files:
                raise DataError(f"data.paths {data_cfg.paths} matched no files")
        self.files = cap_bytes(files, data_cfg.max_bytes, self.stats)
        self.document = resolve_document_mode(getattr(data_cfg, "document", "auto"), data_cfg.source)
        self.units = group_documents(self.files, self.document)
        self.split_by, self.split_description = choose_val_split(
            self.units, data_cfg.val_fraction, data_cfg.seq_len, getattr(data_cfg, "val_split", "auto"),
            data_cfg.val_windows,
        )
        self._sizes: dict | None = None
        log.info("data split %s", self.split_description)
        if log.isEnabledFor(logging.INFO):  # the sizes need a stat of every file
            log.info("data: %s", self.summary())
        self.train_docs = DocStream(
            self.units, "train", data_cfg.val_fraction, seed, data_cfg.text_field, self.stats, split_by=self.split_by
        )
        self.train = PackedWindows(self.train_docs, data_cfg.seq_len)
        self._val: torch.Tensor | None = None

    def val_windows(self) -> torch.Tensor:
        """The held-out windows [val_windows, seq_len + 1] (the same every time and every seed)."""
        if self._val is None:
            docs = DocStream(
                self.units, "val", self.cfg.val_fraction, 0, self.cfg.text_field, self.stats, epochs=1,
                split_by=self.split_by,
            )
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

    # -- sizes --
    def describe(self, exact: bool = False) -> dict:
        """Corpus and split sizes.

        files, bytes: the input files and their total size. documents: the stream's units (a
        JSONL or Parquet file counts as one; with exact=True documents are counted).
        train_bytes, val_bytes, train_documents, val_documents: the two splits.
        train_tokens_per_epoch: ids (bytes plus one end-of-document id per document) that one
        epoch of the training stream yields; `tokens_bound` says what kind of number it is:
          - "upper bound" (exact=False, text and JSONL files): from file sizes, nothing read;
            skipped input (empty, non-UTF-8, JSON syntax) only makes the real number smaller.
          - "estimate" (exact=False with Parquet files, whose sizes are compressed): from the
            footers' uncompressed column sizes.
          - "exact" (exact=True): both splits read once and counted (as long as reading the corpus).
        """
        if exact:
            return self._count_exactly()
        if self._sizes is None:
            self._sizes = self._estimate_sizes()
        return dict(self._sizes)

    def _base_info(self) -> dict:
        return {
            "source": self.cfg.source, "document": self.document, "val_split": self.split_by,
            "split_description": self.split_description, "val_fraction": self.cfg.val_fraction,
            "seq_len": self.cfg.seq_len, "files": len(self.files), "bytes": sum(_file_size(f) for f in self.files),
            "documents": len(self.units),
        }

    def _estimate_sizes(self) -> dict:
        vf = self.cfg.val_fraction
        train_bytes = val_bytes = train_docs = val_docs = train_tokens = 0
        bound = "upper bound"
        for u in self.units:
            files = unit_files(u)
            size = sum(_file_size(f) for f in files)
            if u.kind == "parquet":
                meta = _parquet_text_bytes(u, self.cfg.text_field)
                size, rows = meta if meta is not None else (size, 0)
                bound = "estimate"
            if u.kind in ("jsonl", "parquet"):
                # Records are split one by one: the file's text divides in about val_fraction.
                rows = rows if u.kind == "parquet" else 0
                train_bytes += size - int(size * vf)
                val_bytes += int(size * vf)
                train_docs, val_docs = train_docs + 1, val_docs + 1
                # A JSONL record's text plus its EOD never exceeds its line; Parquet rows add an EOD each.
                train_tokens += size + rows
                continue
            padded = size + (len(files) if u.kind == "group" else 0)  # newline joins inside a group
            if self.split_by == "bytes":
                head = int(padded * (1.0 - vf))
                train_bytes, val_bytes = train_bytes + head, val_bytes + size - min(size, head)
                train_docs, val_docs = train_docs + 1, val_docs + 1
                train_tokens += head + 3 + 1  # the cut moves forward by at most 3 bytes
            elif doc_is_val(u.name, 0, vf):
                val_bytes, val_docs = val_bytes + size, val_docs + 1
            else:
                train_bytes, train_docs = train_bytes + size, train_docs + 1
                train_tokens += padded + 1
        return {
            **self._base_info(), "train_bytes": train_bytes, "val_bytes": val_bytes,
            "train_documents": train_docs, "val_documents": val_docs,
            "train_tokens_per_epoch": train_tokens, "tokens_bound": bound,
        }

    def _count_exactly(self) -> dict:
        counts = {}
        for split in ("train", "val"):
            docs = DocStream(
                self.units, split, self.cfg.val_fraction, 0, self.cfg.text_field, DataStats(warn_limit=0), epochs=1,
                split_by=self.split_by,
            )
            n_docs = n_ids = 0
            try:
                while True:
                    _, ids = docs.next_doc()
                    n_docs, n_ids = n_docs + 1, n_ids + len(ids)
            except (StopIteration, DataError):  # DataError: a split without any document
                pass
            counts[split] = (n_docs, n_ids)
        (train_docs, train_ids), (val_docs, val_ids) = counts["train"], counts["val"]
        info = self._base_info()
        info["documents"] = train_docs if self.split_by == "bytes" else train_docs + val_docs
        return {
            **info, "train_bytes": train_ids - train_docs, "val_bytes": val_ids - val_docs,
            "train_documents": train_docs, "val_documents": val_docs,
            "train_tokens_per_epoch": train_ids, "tokens_bound": "exact",
        }

    def summary(self) -> str:
        """One line of corpus and split sizes (from file sizes) for the start-up log."""
        d = self.describe()
        return (
            f"{d['files']:,} files, {d['bytes']:,} bytes, {d['documents']:,} documents ({self.document} documents); "
            f"split by {self.split_by}: train ~{d['train_bytes']:,} bytes in {d['train_documents']:,} documents, "
            f"val ~{d['val_bytes']:,} bytes in {d['val_documents']:,}; one training epoch: "
            f"{d['train_tokens_per_epoch']:,} tokens ({d['tokens_bound']})"
        )

    def epoch_budget_warning(self, train_tokens: int) -> str | None:
        """A message when `train_tokens` (a run's whole token budget) cannot fit in one epoch.

        It compares against `describe()`'s training tokens per epoch: with an upper bound a
        message means the data surely repeats; with an estimate, that it probably does. None
        when the budget fits (for an upper bound: may still repeat by the size of skipped input;
        use describe(exact=True) to be sure).
        """
        d = self.describe()
        epoch = d["train_tokens_per_epoch"]
        if train_tokens <= epoch:
            return None
        certainty = {"exact": "", "upper bound": "at most ", "estimate": "about "}[d["tokens_bound"]]
        return (
            f"the run trains on {train_tokens:,} tokens but one epoch of the training split holds {certainty}"
            f"{epoch:,} ({d['tokens_bound']}): the data repeats about {train_tokens / max(1, epoch):.2f} times; "
            "add data, lower the steps or the batch, or lower data.val_fraction"
        )

    def state_dict(self) -> dict:
        return {"train": self.train.state_dict(), "stats": dict(self.stats.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.train.load_state_dict(state["train"])
        for reason, n in state.get("stats", {}).items():
            self.stats.counts[reason] = max(self.stats.counts[reason], int(n))
