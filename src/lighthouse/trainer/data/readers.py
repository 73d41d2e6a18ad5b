"""Reading documents out of one source file (text, a folder or package group, JSONL, Parquet).

`iter_file_docs` yields (index, UTF-8 bytes or None) for every document of a file from a
given index on; None marks one that is skipped (held out by the split, empty, not UTF-8, a bad
record), so that the stream's position still advances. Bad input is counted in `DataStats`,
never raised mid-run.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator

from .sources import DataError, DataStats, FileGroup, SourceFile

UTF8_CHECK_CHUNK = 1 << 24  # validate larger documents in pieces rather than decoding them whole


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
