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
`data.paths`, or below the folder a glob pattern searches), concatenated in path order (each
file starting on a new line), so documents run to hundreds of KB. "auto" is "package" for
site-packages and "file" otherwise. JSONL and Parquet records, and files named directly, are
always documents of their own; "folder" or "package" with nothing to join (data.paths names
only single files) is an error, not a setting that silently does nothing.

Every document becomes its UTF-8 bytes (ids 0..255) followed by `EOD_ID` (`lighthouse.tokenizer`),
held whole in memory while it is packed (2 bytes per byte). Empty, unreadable and non-UTF-8 files (and
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

The modules, in import order:
    sources.py   files of each source, folder and package documents, skipped-input counts
    readers.py   the documents of one file (text, group, JSONL, Parquet)
    split.py     the validation split (by documents or by bytes) and how "auto" chooses
    stream.py    DocStream and PackedWindows: the seeded order, packing, the checkpointed position
    __init__.py  ByteData: the whole data setup of a run (and the names above)

Legend: B windows in a batch, N window length (seq_len).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .sources import (
    DataError,
    DataStats,
    FileGroup,
    SourceFile,
    cap_bytes,
    expand_paths,
    file_kind,
    file_size,
    group_documents,
    resolve_document_mode,
    site_packages_files,
    site_packages_roots,
    stdlib_files,
    stdlib_root,
    unit_files,
)
from .split import byte_split_point, choose_val_split, doc_is_val, parquet_text_bytes
from .stream import AUTO_STREAMS, DocStream, InterleavedWindows, PackedWindows, WindowSource

log = logging.getLogger("lighthouse.data")

__all__ = [
    "AUTO_STREAMS",
    "ByteData",
    "DataError",
    "DataStats",
    "DocStream",
    "FileGroup",
    "InterleavedWindows",
    "PackedWindows",
    "SourceFile",
    "byte_split_point",
    "cap_bytes",
    "choose_val_split",
    "doc_is_val",
    "expand_paths",
    "file_kind",
    "group_documents",
    "site_packages_files",
    "site_packages_roots",
    "stdlib_files",
    "WindowSource",
]


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
        if self.document != "file" and not any(f.kind == "text" and f.root is not None for f in self.files):
            raise DataError(
                f"data.document = {self.document!r} joins the text files of a folder, but data.paths names only single "
                "files (and JSONL/Parquet records are documents of their own); name folders or glob patterns in "
                'data.paths, or set data.document = "file"'
            )
        self.units = group_documents(self.files, self.document)
        self.split_by, self.split_description = choose_val_split(
            self.units, data_cfg.val_fraction, data_cfg.seq_len, getattr(data_cfg, "val_split", "auto"),
            data_cfg.val_windows,
        )
        self._sizes: dict | None = None
        self.streams = self._stream_count(getattr(data_cfg, "streams", 1))
        log.info("data split %s", self.split_description)
        if log.isEnabledFor(logging.INFO):  # the sizes need a stat of every file
            log.info("data: %s", self.summary())
        self.train = self._train_stream(seed, self.streams)
        self._val: torch.Tensor | None = None

    def _stream_count(self, k: int) -> int:
        """data.streams, with 0 (auto) resolved: the most streams up to AUTO_STREAMS in which every stream
        (every n-th document unit) holds a training document, so a small corpus gets fewer."""
        if k > 0:
            return k
        trains = [not self._held_out(u) for u in self.units]
        for n in range(min(AUTO_STREAMS, len(self.units)), 1, -1):
            if all(any(trains[j::n]) for j in range(n)):
                return n
        return 1

    def _held_out(self, unit) -> bool:
        """Whether the whole unit is validation data: a text document (or group) under the whole-document
        split whose name hashes below val_fraction. JSONL/Parquet records and byte-split documents have
        a part in both splits."""
        return (self.split_by == "documents" and unit.kind not in ("jsonl", "parquet")
                and doc_is_val(unit.name, 0, self.cfg.val_fraction))

    def _train_stream(self, seed: int, k: int) -> WindowSource:
        """One packed stream of the training documents, or (k > 1) k of them, each over every k-th
        document unit, taken in turn."""
        if k == 1:
            return PackedWindows(self._train_docs(self.units, seed), self.cfg.seq_len)
        if k > len(self.units):
            raise DataError(f"data.streams = {k} but the corpus has {len(self.units)} documents (units of "
                            f"data.document = {self.document!r}): use at most {len(self.units)} streams")
        return InterleavedWindows([PackedWindows(self._train_docs(self.units[j::k], seed), self.cfg.seq_len)
                                   for j in range(k)])

    def _train_docs(self, units, seed: int) -> DocStream:
        return DocStream(units, "train", self.cfg.val_fraction, seed, self.cfg.text_field, self.stats,
                         split_by=self.split_by)

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
            "seq_len": self.cfg.seq_len, "files": len(self.files), "bytes": sum(file_size(f) for f in self.files),
            "documents": len(self.units),
        }

    def _estimate_sizes(self) -> dict:
        vf = self.cfg.val_fraction
        train_bytes = val_bytes = train_docs = val_docs = train_tokens = 0
        bound = "upper bound"
        for u in self.units:
            files = unit_files(u)
            size = sum(file_size(f) for f in files)
            if u.kind == "parquet":
                meta = parquet_text_bytes(u, self.cfg.text_field)
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
            elif self._held_out(u):
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
            f"{d['train_tokens_per_epoch']:,} tokens ({d['tokens_bound']}); training windows from "
            + ("one stream (documents back to back)" if self.streams == 1 else f"{self.streams} streams in turn")
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

    def long_document_warning(self, tokens_per_step: int, steps: int = 8) -> str | None:
        """A message when the config asks for one stream (data.streams = 1) and one document fills
        `steps` or more consecutive training steps.

        Read in one piece, such a document is all the model sees for those steps, and it fits it at
        the validation set's expense: in docs/results.md, windows from 16 streams ended every run
        0.2-1.0 bpb lower. Text documents only (a JSONL or Parquet file holds many records).
        """
        if getattr(self.cfg, "streams", 1) != 1 or tokens_per_step <= 0:
            return None  # several streams, or auto on a corpus that cannot fill two: nothing to change
        sizes = [(sum(file_size(f) for f in unit_files(u)), u.name) for u in self.units
                 if all(f.kind == "text" for f in unit_files(u))]
        if not sizes:
            return None
        size, name = max(sizes)
        if size < steps * tokens_per_step:
            return None
        return (
            f"the largest document ({name}, {size:,} bytes) fills about {size // tokens_per_step:,} consecutive "
            f"training steps of {tokens_per_step:,} tokens, read in one piece: set data.streams = 0 (auto) to take "
            f"windows in turn from up to {AUTO_STREAMS} streams of documents (docs/results.md: every run of the "
            "robustness matrix ended 0.2-1.0 bpb lower with 16)"
        )

    def state_dict(self) -> dict:
        return {"train": self.train.state_dict(), "stats": dict(self.stats.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.train.load_state_dict(state["train"])
        for reason, n in state.get("stats", {}).items():
            self.stats.counts[reason] = max(self.stats.counts[reason], int(n))
