"""The byte-level data pipeline: text, JSONL, Parquet, bad input, split, order, resumption."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from lighthouse.model import EOD_ID
from lighthouse.trainer.config import DataConfig
from lighthouse.trainer.data import (
    ByteData,
    DataError,
    DataStats,
    DocStream,
    PackedWindows,
    SourceFile,
    cap_bytes,
    decode,
    doc_is_val,
    expand_paths,
    stdlib_files,
)


def docs_of(files, split="train", seed=0, val_fraction=0.2, text_field="text", stats=None):
    """All documents of one epoch, as text."""
    stream = DocStream(files, split, val_fraction, seed, text_field, stats, epochs=1)
    out = []
    try:
        while True:
            _, ids = stream.next_doc()
            assert ids[-1] == EOD_ID
            out.append(decode(ids))
    except StopIteration:
        return out
    except DataError:  # a split with no document at all
        assert not out
        return out


def all_docs(files, **kw):
    return sorted(docs_of(files, "train", **kw) + docs_of(files, "val", **kw))


@pytest.fixture
def corpus(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("hello plain text\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("héllo ✓ unicode\n", encoding="utf-8")
    with open(tmp_path / "c.jsonl", "w", encoding="utf-8") as fh:
        for i in range(5):
            fh.write(json.dumps({"text": f"json doc {i}", "id": i}) + "\n")
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(4)], "n": list(range(4))}), tmp_path / "d.parquet")
    return tmp_path


def test_reads_text_jsonl_parquet(corpus):
    files = expand_paths([str(corpus)])
    assert [f.kind for f in files] == ["text", "text", "jsonl", "parquet"]
    docs = all_docs(files)
    want = ["hello plain text\n", "héllo ✓ unicode\n"] + [f"json doc {i}" for i in range(5)]
    want += [f"parquet row {i}" for i in range(4)]
    assert docs == sorted(want)


def test_globs_and_custom_field(tmp_path):
    with open(tmp_path / "x.jsonl", "w") as fh:
        fh.write(json.dumps({"content": "abc"}) + "\n")
    files = expand_paths([str(tmp_path / "*.jsonl")])
    assert len(files) == 1
    assert all_docs(files, text_field="content") == ["abc"]
    with pytest.raises(DataError, match="no such file"):
        expand_paths([str(tmp_path / "missing.txt")])


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
    (tmp_path / "good.txt").write_text("good document", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.txt")  # unreadable
    with open(tmp_path / "mixed.jsonl", "wb") as fh:
        fh.write(b'{"text": "fine line"}\n')
        fh.write(b"{not json\n")
        fh.write(b'{"other": 1}\n')
        fh.write(b'{"text": 5}\n')
        fh.write(b"\n")
        fh.write(b'{"text": "caf\xe9"}\n')
        fh.write(b'{"text": ""}\n')
        fh.write(b'{"text": "\\ud800 lone surrogate"}\n')
        fh.write(b'{"text": "last line"}\n')
    stats = DataStats()
    files = expand_paths([str(tmp_path)])
    with caplog.at_level(logging.WARNING, logger="lighthouse.data"):
        docs = all_docs(files, stats=stats, val_fraction=0.01)
    assert docs == sorted(["good document", "fine line", "last line"])
    assert stats.counts == {"empty": 2, "not_utf8": 3, "bad_record": 3, "unreadable": 2}
    assert "skipped 10 inputs" in stats.summary()
    warned = [r.getMessage() for r in caplog.records]
    assert 0 < len(warned) <= stats.warn_limit and all(m.startswith("skipping ") for m in warned)


def test_parquet_without_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    (tmp_path / "q.txt").write_text("ok", encoding="utf-8")
    stats = DataStats()
    assert all_docs(expand_paths([str(tmp_path)]), stats=stats) == ["ok"]
    assert stats.counts == {"bad_record": 1}


def test_no_usable_documents_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    stream = DocStream(expand_paths([str(tmp_path)]), "train", 0.1, 0)
    with pytest.raises(DataError, match="no usable documents"):
        stream.next_doc()


def test_split_is_disjoint_and_seed_independent(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i:02d}.txt").write_text(f"document number {i}", encoding="utf-8")
    files = expand_paths([str(tmp_path)])
    train0, val0 = set(docs_of(files, "train", seed=0)), set(docs_of(files, "val", seed=0))
    assert train0 and val0 and not train0 & val0 and len(train0 | val0) == 60
    assert set(docs_of(files, "val", seed=5)) == val0
    assert 0.05 < len(val0) / 60 < 0.45  # val_fraction 0.2
    assert doc_is_val("a", 0, 1e-9) is False


def test_order_is_deterministic_from_the_seed(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i:02d}.txt").write_text(f"doc {i}", encoding="utf-8")
    files = expand_paths([str(tmp_path)])
    a, b, c = docs_of(files, seed=1), docs_of(files, seed=1), docs_of(files, seed=2)
    assert a == b and a != c and sorted(a) == sorted(c)


def test_packing_windows_and_resume(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i:02d}.txt").write_text(f"d{i} " * (i % 3 + 1), encoding="utf-8")
    files = expand_paths([str(tmp_path)])

    def packer():
        return PackedWindows(DocStream(files, "train", 0.1, 3), seq_len=16)

    p = packer()
    windows = [p.next_window() for _ in range(40)]  # more than one epoch
    assert all(w.shape == (17,) for w in windows)
    # consecutive windows overlap by one id: the last target is the next window's first input
    assert all(windows[i][-1] == windows[i + 1][0] for i in range(39))
    stream = np.concatenate([windows[0]] + [w[1:] for w in windows[1:]])
    assert (stream == EOD_ID).sum() > 30  # documents separated by EOD, epochs wrap around

    for cut in (0, 1, 7, 23):
        q = packer()
        for _ in range(cut):
            q.next_window()
        state = q.state_dict()
        r = packer()
        r.load_state_dict(json.loads(json.dumps(state)))  # survives serialization
        assert all(np.array_equal(r.next_window(), windows[cut + i]) for i in range(10))

    batch = packer().next_batch(3)
    assert batch.shape == (3, 17) and batch.dtype == torch.int64


def test_stdlib_corpus():
    files = stdlib_files()
    names = [f.name for f in files]
    assert len(files) > 100 and names == sorted(names)
    assert not any("site-packages" in n or "dist-packages" in n for n in names)
    assert all(n.endswith(".py") for n in names)
    capped = cap_bytes(files, 200_000)
    assert 0 < len(capped) < len(files)
    assert sum(f.path.stat().st_size for f in capped) <= 200_000 or len(capped) == 1


def test_byte_data_on_stdlib_is_deterministic():
    cfg = DataConfig(seq_len=64, val_windows=4, max_bytes=3_000_000)
    a, b = ByteData(cfg, seed=0), ByteData(cfg, seed=0)
    assert torch.equal(a.train.next_batch(4), b.train.next_batch(4))
    assert torch.equal(a.val_windows(), b.val_windows())
    assert a.val_windows().shape == (4, 65)
    assert not torch.equal(ByteData(cfg, seed=1).train.next_batch(4), b.train.next_batch(4))


def test_val_split_too_small(tmp_path):
    (tmp_path / "a.txt").write_text("tiny", encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(tmp_path)], seq_len=64, val_fraction=0.5)
    with pytest.raises(DataError):
        ByteData(cfg, seed=0).val_windows()


def test_file_vanishing_mid_run_is_skipped(tmp_path):
    for i in range(4):
        (tmp_path / f"f{i}.txt").write_text(f"doc {i} " * 10, encoding="utf-8")
    files = expand_paths([str(tmp_path)])
    stats = DataStats()
    stream = DocStream(files, "train", 0.01, 0, stats=stats)
    first_pos, _ = stream.next_doc()
    order = stream.order(0)
    for f in order[1:3]:
        files[f].path.unlink()
    p = PackedWindows(stream, seq_len=8)
    for _ in range(20):
        p.next_window()
    assert stats.counts["unreadable"] == 2


def test_source_file_kinds():
    from pathlib import Path

    from lighthouse.trainer.data import file_kind

    assert file_kind(Path("a.JSONL")) == "jsonl" and file_kind(Path("a.parquet")) == "parquet"
    assert file_kind(Path("a.py")) == "text" and isinstance(SourceFile(Path("a"), "a", "text"), SourceFile)
