"""The validation split: which documents, or which part of every document, are held out.

- "documents": a document is held out when a hash of its name (file name plus its index
  inside the file) falls below `val_fraction` (`doc_is_val`).
- "bytes": every document's last `val_fraction` of bytes, from a character start
  (`byte_split_point`).
- "auto": "documents" unless, judged from file sizes, its held-out documents would not fill
  the validation windows or the rest one training window (`choose_val_split`).
None of it depends on the seed.
"""

from __future__ import annotations

import hashlib

from .sources import DataError, SourceFile, file_size, unit_files

VAL_SPLITS = ("auto", "documents", "bytes")


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


def parquet_text_bytes(f: SourceFile, text_field: str) -> tuple[int, int] | None:
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
        ids[doc_is_val(u.name, 0, val_fraction)] += sum(file_size(f) for f in unit_files(u)) + 1
        if ids[True] >= need[True] and ids[False] >= need[False]:
            return "documents", docs_text
    reason = (
        f"the whole-document split would hold out {n_val} of {n_text} documents with about {ids[True]:,} ids "
        f"(data.val_windows = {val_windows} windows need {need[True]:,}) and keep about {ids[False]:,} for training "
        f"(one window needs {need[False]:,})"
    )
    return "bytes", f"{bytes_text}, because {reason}"
