"""Evaluations of trained byte-level models; they need only a model callable `model(idx_BN) -> logits_BNV`.

    bpb       validation bits-per-byte (and loss) over held-out windows (the trainer's metric)
    position  validation bits-per-byte bucketed by position in the window (0-1K, 1K-4K, 4K-16K, ...)
    passkey   passkey retrieval: a number hidden at a depth of filler text, decoded greedily;
              accuracy by context length and depth, with a heat map
    leak      the leak meter: how much the loss at t changes when the bytes after t are replaced
              (0 for dense attention and causal selection; above 0: the model reads its future)

`lighthouse eval --checkpoint RUN --task bpb|position|passkey|leak` runs them on a checkpoint
(`lighthouse.eval_tasks`). Each takes a model, data, a device and an autocast dtype; none
imports the trainer (`common.py`: autocast, eval mode and the window -> nats core, shared by all).
"""
