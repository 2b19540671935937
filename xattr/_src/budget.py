"""How many perturbed copies go into one model call: ``chunk_size``, else a memory budget of
perturbed-input bytes per call (NOTE: [Perturbed copies in one call] in `perturb`)."""

from __future__ import annotations

import torch

from . import tree as T

# On a CUDA device the default budget is 1/64 of the memory free for new tensors (the device's
# free memory plus what PyTorch's allocator holds unused), kept between MEMORY_BUDGET and
# MAX_MEMORY_BUDGET: bigger calls are faster there (measured on an H100, ResNet-50 at 224 px:
# 1360 rows in one call 214 ms, in calls of 128 rows 227 ms). The activations come on top
# (about 20-40x the input for ResNet-50 and VGG-16), hence the 1/64; a call that still runs out of
# memory is retried with half the copies (`evaluate`).
MEMORY_BUDGET = 64 * 2**20  # bytes of perturbed inputs per model call on an accelerator, at least
MAX_MEMORY_BUDGET = 2**30
# On CPU a smaller call is faster: the activations of one call must stay in cache rather than be
# faulted in fresh (measured, occlusion on the 3-conv CNN, 784 rows of 3x32x32: one call 221 ms,
# calls of 128-160 rows 137-140 ms, of 400 rows 199 ms; 2 MiB of these inputs is 170 rows).
CPU_MEMORY_BUDGET = 2 * 2**20
# Without chunk_size, at most this many model rows per call: past a few thousand rows one call of
# a small (tabular) model gets slower, not faster (measured on CPU: 20 features x 25 Shapley
# samples x 32 rows in one call 7.1 ms, in calls of 4096 rows 3.4 ms: allocator page faults).
MAX_ROWS = 4096
# Integer inputs are indices (token ids into an embedding), each costing the model a row of
# floats, not its 8 bytes: each element counts as a 256-wide float32 row. Measured on CPU,
# per-token feature ablation of one text on all-MiniLM-L6-v2 (eager attention): 256 tokens in
# calls of 4-8 copies 15.7-17.2 s and 0.7 GB, in one call of 257 rows 31 s and 2.7 GB; 128
# tokens in calls of 8-32 copies 3.1-3.4 s, in one call 4.0-7.0 s. 2 MiB at 1 KiB an id is 2048
# tokens a call: 8 copies of a 256-token text, 16 of a 128-token one. Bool inputs (flags, masks)
# count as their bytes.
INDEX_BYTES = 1024


def default_budget(device: torch.device) -> int:
    """Bytes of perturbed inputs per call when neither chunk_size nor memory_budget is given."""
    if device.type == "cpu":
        return CPU_MEMORY_BUDGET
    if device.type != "cuda":
        return MEMORY_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)  # one call: each of memory_reserved/allocated builds this dict
    unused = stats.get("reserved_bytes.all.current", 0) - stats.get("allocated_bytes.all.current", 0)
    return budget_from_free(free + unused)


def budget_from_free(free_bytes: int) -> int:
    """1/64 of the free memory, between `MEMORY_BUDGET` and `MAX_MEMORY_BUDGET`."""
    return int(min(MAX_MEMORY_BUDGET, max(MEMORY_BUDGET, free_bytes // 64)))


class Spans:
    """Copies ``s..e-1`` for each model call, ``per`` at a time. `shrink` halves ``per`` and makes
    the next span start again at ``s``: a call that ran out of memory is retried smaller."""

    def __init__(self, k: int, per: int, adaptive: bool):
        self.k, self.per, self.adaptive, self.next = k, per, adaptive, 0

    def __iter__(self):
        while self.next < self.k:
            s, e = self.next, min(self.next + self.per, self.k)
            self.next = e
            yield s, e

    def shrink(self, s: int, e: int) -> bool:
        if not self.adaptive or e - s == 1:
            return False
        self.per, self.next = max(1, (e - s) // 2), s
        return True


def copies_per_call(selected, batch: int, chunk_size: int | None, memory_budget: int | None, n_copies: int | None = None) -> int:
    """Copies of the batch per model call: ``chunk_size // B`` rows' worth, else as many copies
    as fit ``memory_budget`` bytes of perturbed inputs (an integer element counted as
    `INDEX_BYTES`) and `MAX_ROWS` rows; at least one.

    ``n_copies`` (how many copies there are, when known) spares the free-memory query on CUDA
    when the smallest default budget already holds them all (the query costs ~1 ms there)."""
    if T.checked_chunk_size(chunk_size) is not None:
        return max(1, chunk_size // batch)
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    leaves = T.leaves(selected)
    per_copy = sum(t.numel() * (INDEX_BYTES if _indices(t) else t.element_size()) for t in leaves)
    cap = max(1, MAX_ROWS // batch)
    if memory_budget is None:
        device = leaves[0].device
        enough = MEMORY_BUDGET // max(1, per_copy) >= min(cap, n_copies if n_copies is not None else cap)
        memory_budget = MEMORY_BUDGET if device.type == "cuda" and enough else default_budget(device)
    by_bytes = memory_budget // max(1, per_copy)
    return max(1, min(by_bytes, cap))


def _indices(t: torch.Tensor) -> bool:
    """An integer tensor other than bool: indices, most likely token ids (`INDEX_BYTES`)."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
