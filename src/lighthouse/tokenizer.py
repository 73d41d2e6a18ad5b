"""The byte vocabulary and its one codec: the data, the evaluations, sampling and export use these.

    ids 0..255     the bytes of UTF-8 text (BYTE_VOCAB of them)
    EOD_ID = 256   end of document: ends every document the data packs, so a document starts
                   right after one (a prompt does too)
    PAD_ID = 257   reserved: packing never pads (the exported tokenizer's pad token)
    258..263       reserved
    VOCAB_SIZE     264: the bytes and 8 special ids, a multiple of 8

`encode` turns text (or its UTF-8 bytes) into ids, with an EOD_ID before it (`start`: a
document begins) or after it (`end`: a whole document, as the data packs it). `decode` is its
inverse on bytes, and the one rule for special ids: they are not text and are skipped, wherever
they stand (an EOD_ID between two documents, a reserved id a sampler drew). This is what the
exported Hugging Face tokenizer does with `decode(..., skip_special_tokens=True)`. A caller that
wants one document cuts at EOD_ID first (`lighthouse sample` stops generating there).
"""

from __future__ import annotations

BYTE_VOCAB = 256  # ids 0..255: raw bytes
EOD_ID = 256  # end of document: separates packed documents
PAD_ID = 257  # reserved (packing never pads)
VOCAB_SIZE = 264  # 256 bytes + 8 special ids (257..263 reserved), a multiple of 8


def encode(text: str | bytes | memoryview, *, start: bool = False, end: bool = False):
    """Text or UTF-8 bytes -> ids [n] (uint16), with EOD_ID first when `start` and last when `end`.

    A numpy array: uint16 (ids go up to 263) keeps a long document at 2 bytes per byte in
    memory; widen the ids (to int64) where they become model inputs.
    """
    import numpy as np  # here, not at the top: the attention and the model need torch alone

    data = text.encode("utf-8") if isinstance(text, str) else text
    n = len(data)
    ids = np.empty(start + n + end, dtype=np.uint16)
    ids[start : start + n] = np.frombuffer(data, dtype=np.uint8)
    if start:
        ids[0] = EOD_ID
    if end:
        ids[-1] = EOD_ID
    return ids


def decode(ids) -> str:
    """Ids -> text: the bytes of the byte ids, special ids skipped; invalid UTF-8 becomes U+FFFD."""
    return bytes(int(i) for i in ids if int(i) < BYTE_VOCAB).decode("utf-8", errors="replace")
