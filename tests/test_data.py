"""The byte-level data pipeline: text, JSONL, Parquet, bad input, split, order, resumption."""

import dataclasses
import json
import logging
import os

import numpy as np
import pytest
import torch

from lighthouse.tokenizer import EOD_ID, decode
from lighthouse.trainer.config import DataConfig
from lighthouse.trainer.data import (
    AUTO_STREAMS,
    ByteData,
    DataError,
    DataStats,
    DocStream,
    FileGroup,
    InterleavedWindows,
    PackedWindows,
    SourceFile,
    byte_split_point,
    cap_bytes,
    choose_val_split,
    doc_is_val,
    expand_paths,
    group_documents,
    site_packages_files,
    site_packages_roots,
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


# ---- corpora of few or long documents --------------------------------------------------------------
def one_epoch(units, split, val_fraction, split_by, seed=0):
    """The raw bytes of every document of one epoch of a split, in stream order."""
    stream = DocStream(units, split, val_fraction, seed, epochs=1, split_by=split_by)
    out = []
    try:
        while True:
            _, ids = stream.next_doc()
            assert ids[-1] == EOD_ID and (ids[:-1] < 256).all()
            out.append(bytes(ids[:-1].astype(np.uint8)))
    except StopIteration:
        return out


def write_long_file(path, n_lines=1500):
    text = "".join(f"line {i}: café ✓ {'x' * (i % 7)}\n" for i in range(n_lines))
    path.write_text(text, encoding="utf-8")
    return path.read_bytes()


def test_one_file_corpus_is_split_by_byte_ranges(tmp_path, caplog):
    raw = write_long_file(tmp_path / "book.txt")
    cfg = DataConfig(source="files", paths=[str(tmp_path / "book.txt")], seq_len=64, val_fraction=0.1, val_windows=4)
    with caplog.at_level(logging.INFO, logger="lighthouse.data"):
        data = ByteData(cfg, seed=0)
    assert data.split_by == "bytes" and data.split_description.startswith("by byte ranges")
    assert "hold out 0 of 1 documents" in data.split_description or "hold out 1 of 1" in data.split_description
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "byte ranges" in logged and "1 files" in logged and "train ~" in logged
    # train is the head, validation the tail: disjoint and together the whole file
    (head,), (tail,) = one_epoch(data.units, "train", 0.1, "bytes"), one_epoch(data.units, "val", 0.1, "bytes")
    assert head + tail == raw and len(head) == byte_split_point(raw, 0.1)
    assert 0.09 < len(tail) / len(raw) < 0.11
    head.decode("utf-8"), tail.decode("utf-8")  # both halves stay valid text
    # the stream trains on the head only, and the split does not depend on the seed
    batch = data.train.next_batch(8)
    stream = bytes(batch[0].tolist()) + b"".join(bytes(row[1:].tolist()) for row in batch[1:])  # windows overlap by 1
    assert stream == head[: len(stream)]
    other = ByteData(cfg, seed=7)
    assert other.split_description == data.split_description
    assert torch.equal(other.val_windows(), data.val_windows()) and data.val_windows().shape == (4, 65)
    assert bytes(data.val_windows()[0, :64].tolist()) == tail[:64]
    # the whole-document split alone cannot feed this corpus (the old failure)
    with pytest.raises(DataError, match="no usable documents"):
        for split in ("train", "val"):
            DocStream(data.units, split, 0.1, 0).next_doc()


def test_byte_split_point_keeps_characters_whole():
    data = "é".encode() * 100  # 200 bytes of 2-byte characters
    assert byte_split_point(data, 0.255) == 150  # int(149.0) is a continuation byte: moved forward
    assert byte_split_point(data, 0.25) == 150
    assert byte_split_point(b"abc", 0.5) == 1 and byte_split_point(b"", 0.5) == 0


def test_auto_split_keeps_whole_documents_where_they_work(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i:02d}.txt").write_text(f"document number {i} " * 20, encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(tmp_path)], seq_len=32, val_fraction=0.2, val_windows=2)
    data = ByteData(dataclasses.replace(cfg, streams=1), seed=3)
    assert data.split_by == "documents" and data.split_description.startswith("by whole documents")
    legacy = PackedWindows(DocStream(expand_paths([str(tmp_path)]), "train", 0.2, 3), seq_len=32)
    assert all(np.array_equal(data.train.next_window(), legacy.next_window()) for _ in range(50))
    # more validation windows than the held-out documents fill: byte ranges instead
    many = DataConfig(source="files", paths=[str(tmp_path)], seq_len=32, val_fraction=0.2, val_windows=10_000)
    assert ByteData(many, seed=3).split_by == "bytes"
    # and the choice can be forced either way
    units = expand_paths([str(tmp_path)])
    assert choose_val_split(units, 0.2, 32, "bytes")[0] == "bytes"
    assert choose_val_split(units, 0.2, 10**9, "documents")[0] == "documents"
    assert choose_val_split(units, 0.2, 10**9, "auto")[0] == "bytes"


def make_tree(root):
    """A folder with packages, a sub-package, a top-level module and files to skip."""
    files = {
        "alpha/__init__.py": "A = 1\n",
        "alpha/core.py": "def core():\n    return 2",  # no final newline
        "alpha/sub/deep.py": "DEEP = 3\n",
        "beta/mod.py": "B = 4\n",
        "top.py": "TOP = 5\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return files


def test_folder_and_package_documents(tmp_path):
    make_tree(tmp_path / "src")
    files = expand_paths([str(tmp_path / "src")])
    by_folder = group_documents(files, "folder")
    assert [u.name for u in by_folder] == ["src/alpha", "src/alpha/sub", "src/beta", "src"]
    by_package = group_documents(files, "package")
    assert [u.name for u in by_package] == ["src/alpha", "src/beta", "src/top.py"]
    alpha = by_package[0]
    assert isinstance(alpha, FileGroup) and [f.name for f in alpha.files] == [
        "src/alpha/__init__.py", "src/alpha/core.py", "src/alpha/sub/deep.py"]
    assert isinstance(by_package[2], SourceFile)  # a top-level module is a document of its own
    assert group_documents(files, "file") == files
    # a group reads as one document: its files in path order, each starting on a new line
    docs = sorted(one_epoch(by_package, "train", 1e-9, "documents"))
    assert docs == sorted([b"A = 1\ndef core():\n    return 2\nDEEP = 3\n", b"B = 4\n", b"TOP = 5\n"])
    cfg = DataConfig(source="files", paths=[str(tmp_path / "src")], document="package", seq_len=8, val_windows=1)
    data = ByteData(cfg, seed=0)
    assert data.document == "package" and data.describe()["documents"] == 3 and data.describe()["files"] == 5



def test_glob_paths_make_folder_documents(tmp_path):
    """Files a glob matched are grouped by their folder (below the folder the pattern searches), as the log
    says; a folder setting with only single files named is an error, not a setting that does nothing."""
    make_tree(tmp_path / "src")
    root = str(tmp_path / "src")
    pattern = f"{root}/**/*.py"
    files = expand_paths([pattern])
    assert [f.name for f in files] == sorted(f.name for f in files)  # names (what the split hashes) unchanged
    assert [u.name for u in group_documents(files, "folder")] == [f"{root}/alpha", f"{root}/alpha/sub",
                                                                  f"{root}/beta", root]
    assert [u.name for u in group_documents(files, "package")] == [f"{root}/alpha", f"{root}/beta", f"{root}/top.py"]
    assert group_documents(files, "file") == files
    data = ByteData(DataConfig(source="files", paths=[pattern], document="folder", seq_len=8, val_windows=1), 0)
    assert len(data.units) == 4 and "4 documents (folder documents)" in data.summary()
    single = DataConfig(source="files", paths=[f"{root}/top.py", f"{root}/beta/mod.py"], document="folder")
    with pytest.raises(DataError, match=r"data.document = 'folder' joins the text files of a folder, but data.paths "
                                        r"names only single files.*data.document = \"file\""):
        ByteData(single, 0)

def test_site_packages_source(tmp_path, caplog):
    site = tmp_path / "site-packages"
    make_tree(site)
    skipped = ["alpha/__pycache__/core.py", "alpha-1.0.dist-info/RECORD.py", ".hidden/x.py", "venv/site-packages/z.py"]
    for rel in skipped + ["alpha/data.txt"]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("SKIPPED = True\n", encoding="utf-8")
    files = site_packages_files([site])
    want = ["alpha/__init__.py", "alpha/core.py", "alpha/sub/deep.py", "beta/mod.py", "top.py"]
    assert [f.name for f in files] == want
    cfg = DataConfig(source="site-packages", paths=[str(site)], seq_len=8, val_windows=1, val_fraction=0.3)
    with caplog.at_level(logging.INFO, logger="lighthouse.data"):
        data = ByteData(cfg, seed=0)
    assert data.document == "package" and [u.name for u in data.units] == ["alpha", "beta", "top.py"]
    info = data.describe()
    assert info["files"] == 5 and info["documents"] == 3 and info["bytes"] == sum(f.path.stat().st_size for f in files)
    assert info["source"] == "site-packages" and info["split_description"] == data.split_description
    assert info["train_bytes"] > 0 and info["val_bytes"] > 0
    assert info["train_bytes"] + info["val_bytes"] <= info["bytes"]
    assert any("5 files" in r.getMessage() and "3 documents" in r.getMessage() for r in caplog.records)
    # every held-out byte is outside the training stream of one epoch
    split = data.split_by
    train, val = one_epoch(data.units, "train", 0.3, split), one_epoch(data.units, "val", 0.3, split)
    assert train and val and not set(train) & set(val)
    assert data.val_windows().shape == (1, 9)
    with pytest.raises(DataError, match="not found"):
        site_packages_files([tmp_path / "missing"])
    assert all(r.is_dir() for r in site_packages_roots())  # lists folders, reads nothing


def test_epoch_tokens_bound_the_real_count(tmp_path):
    make_tree(tmp_path / "src")
    (tmp_path / "src" / "empty.txt").write_bytes(b"")  # counted by size, skipped when read
    (tmp_path / "src" / "book.txt").write_bytes(write_long_file(tmp_path / "book.txt", 300))
    for document in ("file", "package"):
        for split in ("documents", "bytes"):
            cfg = DataConfig(source="files", paths=[str(tmp_path / "src")], document=document, val_split=split,
                             seq_len=16, val_windows=1, val_fraction=0.25)
            data = ByteData(cfg, seed=0)
            cheap, exact = data.describe(), data.describe(exact=True)
            assert cheap["tokens_bound"] == "upper bound" and exact["tokens_bound"] == "exact"
            epoch = sum(len(d) + 1 for d in one_epoch(data.units, "train", 0.25, split))
            assert exact["train_tokens_per_epoch"] == epoch <= cheap["train_tokens_per_epoch"]
            assert cheap["train_tokens_per_epoch"] < epoch + 8 * len(data.units)  # a tight bound
            assert data.epoch_budget_warning(epoch // 2) is None
            warning = data.epoch_budget_warning(10 * cheap["train_tokens_per_epoch"])
            assert warning is not None and "repeats" in warning and "upper bound" in warning


def test_resume_position_with_long_documents(tmp_path):
    make_tree(tmp_path / "src")
    for i in range(6):
        make_tree(tmp_path / "src" / f"pkg{i}")
    units = group_documents(expand_paths([str(tmp_path / "src")]), "package")
    assert any(isinstance(u, FileGroup) and len(u.files) > 3 for u in units)

    def packer():
        return PackedWindows(DocStream(units, "train", 0.2, 5, split_by="bytes"), seq_len=16)

    p = packer()
    windows = [p.next_window() for _ in range(60)]  # several epochs
    for cut in (0, 3, 11, 37):
        q = packer()
        for _ in range(cut):
            q.next_window()
        r = packer()
        r.load_state_dict(json.loads(json.dumps(q.state_dict())))
        assert all(np.array_equal(r.next_window(), windows[cut + i]) for i in range(15))
    # the same through ByteData, as a checkpoint does it
    cfg = DataConfig(source="files", paths=[str(tmp_path / "src")], document="package", seq_len=16, val_windows=1)
    a = ByteData(cfg, seed=1)
    a.train.next_batch(5)
    state = json.loads(json.dumps(a.state_dict()))
    b = ByteData(cfg, seed=1)
    b.load_state_dict(state)
    assert torch.equal(a.train.next_batch(7), b.train.next_batch(7))


def test_data_options_are_validated():
    from lighthouse.trainer.config import ConfigError, load_config

    cfg = load_config(None, ["data.source=site-packages", "data.document=folder", "data.val_split=bytes"])
    assert (cfg.data.source, cfg.data.document, cfg.data.val_split) == ("site-packages", "folder", "bytes")
    with pytest.raises(ConfigError, match="'data.document'"):
        load_config(None, ["data.document=chapter"])
    with pytest.raises(ConfigError, match="'data.val_split'"):
        load_config(None, ["data.val_split=random"])
    with pytest.raises(ConfigError, match="'data.source'"):
        load_config(None, ["data.source=web"])


def test_one_file_corpus_trains(tmp_path):
    from lighthouse.trainer.config import config_from_dict
    from lighthouse.trainer.loop import train

    write_long_file(tmp_path / "book.txt")
    cfg = config_from_dict({
        "name": "one-file", "out_dir": str(tmp_path / "runs"),
        "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64},
        "data": {"source": "files", "paths": [str(tmp_path / "book.txt")], "seq_len": 64, "val_windows": 2},
        "training": {"batch_size": 2, "progress": False, "threads": 1, "eval_every": 0, "checkpoint_every": 0},
        "stages": [{"attention": "dense", "steps": 2}],
    })
    result = train(cfg, echo=lambda *a: None)
    assert [r["stage"] for r in result.rows] == [1] and 0 < result.rows[0]["val_bpb"] < 10


def test_interleaved_streams_spread_a_long_document_and_resume_exactly(tmp_path):
    """data.streams = k: window i comes from stream i mod k, each a packed stream over every k-th
    document unit; a long document fills every k-th window, not consecutive ones; the state
    resumes exactly, and a state of another stream count is refused."""
    (tmp_path / "long.txt").write_text("L" * 2000, encoding="utf-8")  # 62 windows of 32 on its own
    for i in range(30):
        (tmp_path / f"s{i:02d}.txt").write_text(f"short {i} " * 10, encoding="utf-8")
    base = dict(source="files", paths=[str(tmp_path)], seq_len=32, val_fraction=0.1, val_windows=1)
    data = ByteData(DataConfig(**base, streams=3), seed=4)
    assert isinstance(data.train, InterleavedWindows) and len(data.train.streams) == 3
    alone = [PackedWindows(DocStream(data.units[j::3], "train", 0.1, 4, split_by=data.split_by), seq_len=32)
             for j in range(3)]
    got = [data.train.next_window() for _ in range(60)]
    assert all(np.array_equal(w, alone[i % 3].next_window()) for i, w in enumerate(got))
    long_rows = [i for i, w in enumerate(got) if (w == ord("L")).all()]
    assert len(long_rows) >= 10 and all(b - a >= 3 for a, b in zip(long_rows, long_rows[1:]))  # never in a row
    one = ByteData(DataConfig(**base, streams=1), seed=4)
    assert isinstance(one.train, PackedWindows)
    one_rows = [i for i in range(60) if (one.train.next_window() == ord("L")).all()]
    assert any(b - a == 1 for a, b in zip(one_rows, one_rows[1:]))  # one stream: back to back

    state = data.train.state_dict()
    again = ByteData(DataConfig(**base, streams=3), seed=4)
    again.train.load_state_dict(state)
    assert all(np.array_equal(data.train.next_window(), again.train.next_window()) for _ in range(40))
    assert again.train.windows == 100
    with pytest.raises(DataError, match="as 3 interleaved streams and data.streams is 1 now"):
        ByteData(DataConfig(**base, streams=1), seed=4).train.load_state_dict(state)
    with pytest.raises(DataError, match="as 1 stream.* and data.streams is 2 now"):
        ByteData(DataConfig(**base, streams=2), seed=4).train.load_state_dict(one.train.state_dict())
    with pytest.raises(DataError, match="data.streams = 99 but the corpus has 31 documents"):
        ByteData(DataConfig(**base, streams=99), seed=4)


def test_auto_streams_take_as_many_as_the_corpus_fills(tmp_path):
    """data.streams = 0 (the default): 16 streams on a corpus of 31 documents (the same windows as
    data.streams = 16); on a corpus of one training and one held-out document, one stream (two would
    leave a stream with nothing to train on); the start-up line says how many."""
    (tmp_path / "long.txt").write_text("L" * 2000, encoding="utf-8")
    for i in range(30):
        (tmp_path / f"s{i:02d}.txt").write_text(f"short {i} " * 10, encoding="utf-8")
    base = dict(source="files", paths=[str(tmp_path)], seq_len=32, val_fraction=0.1, val_windows=1, val_split="bytes")
    assert DataConfig().streams == 0
    auto, sixteen = ByteData(DataConfig(**base), seed=4), ByteData(DataConfig(**base, streams=16), seed=4)
    assert auto.streams == AUTO_STREAMS == 16 and len(auto.train.streams) == 16
    assert all(np.array_equal(auto.train.next_window(), sixteen.train.next_window()) for _ in range(40))
    assert "training windows from 16 streams in turn" in auto.summary()
    # whole held-out documents: the most streams up to 16 in which every stream has a training document
    whole = ByteData(DataConfig(**{**base, "val_split": "documents"}), seed=4)
    n, held_out = whole.streams, [doc_is_val(u.name, 0, 0.1) for u in whole.units]
    assert 1 < n <= 16 and all(not all(held_out[j::n]) for j in range(n))
    assert all(any(all(held_out[j::m]) for j in range(m)) for m in range(n + 1, 17))
    for _ in range(3 * n):
        whole.train.next_window()

    small = tmp_path / "small" / "corpus"
    small.mkdir(parents=True)
    train_name = next(f"corpus/a{i}.txt" for i in range(1000) if not doc_is_val(f"corpus/a{i}.txt", 0, 0.5))
    val_name = next(f"corpus/b{i}.txt" for i in range(1000) if doc_is_val(f"corpus/b{i}.txt", 0, 0.5))
    for name in (train_name, val_name):
        (small.parent / name).write_text("some text " * 40, encoding="utf-8")
    two = ByteData(DataConfig(source="files", paths=[str(small)], seq_len=32, val_fraction=0.5, val_windows=1,
                              val_split="documents"), seed=0)
    assert len(two.units) == 2 and two.streams == 1 and isinstance(two.train, PackedWindows)
    assert "training windows from one stream" in two.summary()
    two.train.next_window()


def test_one_stream_warns_when_a_document_fills_consecutive_steps(tmp_path):
    """With data.streams = 1 a document of 8 or more steps' worth of tokens is named with the fix; with
    several streams, auto on a one-document corpus, or when every document is shorter, no warning."""
    (tmp_path / "long.txt").write_text("L" * 2000, encoding="utf-8")
    for i in range(30):
        (tmp_path / f"s{i:02d}.txt").write_text(f"short {i} " * 10, encoding="utf-8")
    base = dict(source="files", paths=[str(tmp_path)], seq_len=32, val_fraction=0.1, val_windows=1)
    one = ByteData(DataConfig(**base, streams=1), seed=0)
    message = one.long_document_warning(tokens_per_step=64)
    assert "long.txt, 2,000 bytes" in message and "about 31 consecutive training steps" in message
    assert "data.streams = 0 (auto) to take windows in turn from up to 16 streams" in message
    assert one.long_document_warning(tokens_per_step=251) is None  # 2,000 bytes < 8 steps of 251
    assert ByteData(DataConfig(**base), seed=0).long_document_warning(tokens_per_step=64) is None
    # auto on a corpus that fills only one stream: one stream too, but nothing the user could change
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "long.txt").write_text("L" * 2000, encoding="utf-8")
    alone = ByteData(DataConfig(source="files", paths=[str(tmp_path / "one")], seq_len=32, val_fraction=0.1,
                                val_windows=1, val_split="bytes"), seed=0)
    assert alone.streams == 1 and alone.long_document_warning(tokens_per_step=64) is None


def test_a_stream_with_no_training_document_is_named(tmp_path):
    """data.streams = 2 over a training file and a held-out one: stream 1 holds only the held-out
    document, and the error says which stream and what to do, instead of a count of one file."""
    folder = tmp_path / "corpus"  # a file's name for the split: relative to the folder above the one named
    folder.mkdir()
    train_name = next(f"corpus/a{i}.txt" for i in range(1000) if not doc_is_val(f"corpus/a{i}.txt", 0, 0.5))
    val_name = next(f"corpus/b{i}.txt" for i in range(1000) if doc_is_val(f"corpus/b{i}.txt", 0, 0.5))
    for name in (train_name, val_name):
        (tmp_path / name).write_text("some text " * 40, encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(folder)], seq_len=32, val_fraction=0.5, val_windows=1,
                     val_split="documents", streams=2)
    data = ByteData(cfg, seed=0)
    assert [u.name for u in data.units] == [train_name, val_name]
    data.train.next_window()  # stream 0: the training file
    with pytest.raises(DataError, match="data.streams = 2: stream 1 .* has nothing to train on .*use fewer streams"):
        data.train.next_window()
