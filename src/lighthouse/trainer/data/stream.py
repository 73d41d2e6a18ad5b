"""The training stream: documents in a seeded order, packed into windows, with a position to checkpoint.

`DocStream` yields the documents of one split in a deterministic order drawn from (seed,
epoch); its position (epoch, file, document) is all it needs to continue. `PackedWindows`
cuts them back to back into windows of seq_len + 1 ids that advance by seq_len; its
`state_dict` (the position of the first document in reach and the offset into it) is what a
checkpoint saves. `InterleavedWindows` takes windows in turn from several packed streams over
disjoint shares of the documents (`data.streams`), so that a long document does not fill
consecutive steps.

Legend: B windows in a batch, N window length (seq_len).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

import numpy as np
import torch

from ...tokenizer import encode
from .readers import iter_file_docs
from .sources import DataError, DataStats, SourceFile
from .split import byte_split_point, doc_is_val


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
                return (epoch, file_pos, idx), encode(data, end=True)


class WindowSource:
    """What the trainer reads: `next_window`, and from it batches and skipping."""

    windows: int  # windows handed out so far

    def next_window(self) -> np.ndarray:
        raise NotImplementedError

    def skip(self, n: int) -> None:
        """Move past `n` windows (a resume that knows how far the stream went but not where it stood)."""
        for _ in range(n):
            self.next_window()

    def next_batch(self, n: int) -> torch.Tensor:
        """[n, seq_len + 1] int64: inputs are [:, :-1], targets [:, 1:]."""
        return torch.from_numpy(np.stack([self.next_window() for _ in range(n)]))


class PackedWindows(WindowSource):
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

    def state_dict(self) -> dict:
        pos = self._queue[0][0] if self._queue else self.docs.position
        return {"position": list(pos), "offset": self._offset, "windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        if "streams" in state:
            raise DataError(f"the checkpoint read the training data as {len(state['streams'])} interleaved streams "
                            f"and data.streams is 1 now: resume with data.streams = {len(state['streams'])}")
        self._queue.clear()
        self.docs.seek(state["position"])
        self._offset = int(state["offset"])
        self.windows = int(state["windows"])


# data.streams = 0 (auto): this many streams, or fewer when the corpus cannot fill them.
AUTO_STREAMS = 16


class InterleavedWindows(WindowSource):
    """Window i from stream i mod k: k packed streams over disjoint shares of the documents.

    One packed stream reads documents back to back, so a long document fills consecutive windows
    (a 545 KB header is 133 windows of 4,096 in a row: with one sequence per step, the last third
    of a short run). Dealt into k streams, it fills every k-th window instead, beside k - 1 other
    documents. The state is every stream's own position and the count of windows handed out.
    """

    def __init__(self, streams: list[PackedWindows]):
        if not streams:
            raise ValueError("InterleavedWindows needs at least one stream")
        self.streams = streams
        self.windows = 0

    def next_window(self) -> np.ndarray:
        j, k = self.windows % len(self.streams), len(self.streams)
        try:
            window = self.streams[j].next_window()
        except DataError as e:  # a share of the documents with nothing to train on
            raise DataError(f"data.streams = {k}: stream {j} (every {k}-th document from number {j}) has nothing to "
                            f"train on ({e}); use fewer streams") from None
        self.windows += 1
        return window

    def state_dict(self) -> dict:
        return {"streams": [s.state_dict() for s in self.streams], "windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        saved = len(state["streams"]) if "streams" in state else 1
        if saved != len(self.streams):
            raise DataError(f"the checkpoint read the training data as {saved} stream(s) and data.streams is "
                            f"{len(self.streams)} now: resume with data.streams = {saved}")
        for stream, s in zip(self.streams, state["streams"]):
            stream.load_state_dict(s)
        self.windows = int(state["windows"])
