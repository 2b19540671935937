"""Recurrent layers fed a PackedSequence, written out step by step (`Unfused` runs them): the
packed overloads of ``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` and ``torch.rnn_relu``.

NOTE: [Packed sequences written out]
``nn.LSTM(pack_padded_sequence(x, lengths, ...))`` calls ``torch.lstm(data, batch_sizes, hx,
params, ...)``: ``data`` holds the sequences' steps time-major, step t's ``batch_sizes[t]`` rows
(non-increasing) being the first ``batch_sizes[t]`` sequences in the packed order (longest
first); the output is packed the same way, and h_n (c_n) is each sequence's state at its last
step, a backward direction's at step 0, having started from its initial state at the sequence's
own last step. Written out, each layer and direction runs the steps of NOTE: [Recurrent layers
written out] (written_recurrent.py) over the sequences still running. ``batch_sizes`` is a CPU
tensor of sizes, not data (a transform batches ``data``, never it), so the loop reads it as
Python ints.

Which rows advance is spelled two ways. Outside DeepLift (LRP, guided backprop, a plain
gradient) the rows stay in the packed order and step t runs on the first ``batch_sizes[t]`` of
them, as torch does: a row that has ended is sliced off the running state, one that starts (in
reverse) is joined to it from its initial state, and the outputs are the packed data as they
come. DeepLift pairs rows instead: its call holds the inputs, then their references, row j
against row j + R/2 (NOTE: [Paired rows] in deeplift_rules.py; or one shared row per copy of the
batch, NOTE: [Shared reference]), and its rules find them by position in a tensor of R rows.
Packing sorts those rows by length with ``torch.sort``, which on CPU keeps equal lengths in no
particular order past 16 rows (an example and its reference, of one length, land anywhere among
their ties), and fewer than R rows run at later steps. So under DeepLift the layer takes the
sequences back to the call's own order, by the ``sorted_indices`` of the PackedSequence whose
data it runs on (looked up in the calling frames, where torch's ``nn.LSTM.forward`` holds it;
where there is none, in the data's own order), pads them with zeros to (L, R, D), and runs every
step on all R rows, so the rules pair them as in a padded layer. A row that is not running
(ended, or in reverse not started) is set back to its initial state (``torch.where`` with a
constant mask: a selection, whose ordinary gradient is linear, and alike for both rows of a
pair, which run the same length; the state held is the initial one, not the last, so the rows
past an end stay one step from it, and `differentiated`'s graph walks stay short). A forward
direction's final states are read at each row's last step; outputs and states go back to the
packed order. Rows past a sequence's end take no gradient: padded positions get exactly zero.

Refused (NotImplementedError, saying why): a DeepLift call whose packed batch does not hold one
sequence per paired row, and a pair whose rows run different lengths (a model that computes
lengths from its input, or sorts its rows by hand before ``pack_padded_sequence(...,
enforce_sorted=True)``: DeepLift's doubled batch then reaches the layer reordered). Not seen: a
model that reorders rows of equal lengths before packing with ``enforce_sorted=True`` has them
paired by position, as any permutation of the rows is. With ``enforce_sorted=True`` and lengths
that are not all equal, torch's pack itself refuses DeepLift's doubled batch, whose references
follow the inputs ("must be sorted in decreasing order"). And ``pack_padded_sequence`` has no
backward under torch.func transforms (torch's: "Cannot access data pointer of Tensor that doesn't
have storage", fused or not), so packed models are attributed outside them, as the methods run.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .dependence import differentiated
from .row_layout import _ROWS
from .written_recurrent import _REFUSED, advanced, refuse_dropout, unpacked

_FRAMES = 16  # how many calling frames are searched for the PackedSequence (the module's forward is a few up)


def layers(mode: str, name: str, data, batch_sizes, hx: tuple, params, has_biases, num_layers, dropout, train,
           bidirectional):
    """The stacked layers of a packed ``torch.lstm``/``gru``/``rnn_*`` call: (packed output, final
    states per kind, in the packed order) (NOTE: [Packed sequences written out])."""
    refuse_dropout(name, num_layers, dropout, train)
    if data.dim() != 2 or batch_sizes.dim() != 1:
        raise ValueError(f"{name}: a packed call takes 2-d data and 1-d batch_sizes, got {data.dim()}-d and "
                         f"{batch_sizes.dim()}-d")
    sizes = [int(b) for b in batch_sizes.tolist()]
    order = _call_order(name, data, hx, _lengths(sizes))  # None: the packed order, sliced per step
    x = data
    if order is not None:  # every row at every step, in the call's order
        to_call, to_packed, lengths = order
        x, hx = _padded(data, sizes)[:, to_call], tuple(s[:, to_call] for s in hx)
        running = _running(lengths, x.device)
    dirs = 2 if bidirectional else 1
    group = len(params) // (num_layers * dirs)
    finals = []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            initial = tuple(s[k] for s in hx)
            weights = unpacked(mode, tuple(params[k * group : (k + 1) * group]), has_biases)
            if order is None:
                out, state = _sliced(mode, x, sizes, initial, weights, reverse=d == 1)
            else:
                out, state = _masked(mode, x, lengths, running, initial, weights, reverse=d == 1)
            outs.append(out)
            finals.append(state)
        x = torch.cat(outs, -1) if dirs == 2 else outs[0]
    states = tuple(torch.stack(s) for s in zip(*finals))
    if order is not None:
        x, states = _repacked(x[:, to_packed], sizes), tuple(s[:, to_packed] for s in states)
    return (x, *states)


def _sliced(mode: str, data, sizes: list, initial: tuple, weights: tuple, reverse: bool):
    """One layer in one direction over packed (S, D) data, as torch runs it: step t advances the
    first ``sizes[t]`` rows (the sequences run longest first); a row that has ended leaves the
    running state, one that starts (in reverse) joins it from its initial state. Returns the
    packed (S, H) outputs and the final states of all N rows."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    projected = F.linear(data, w_ih, b_ih)  # every step's input projection in one call
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    steps = reversed(range(len(sizes))) if reverse else range(len(sizes))
    state, ended, outputs = tuple(s[: sizes[-1 if reverse else 0]] for s in initial), [], [None] * len(sizes)
    for t in steps:
        n, have = sizes[t], state[0].shape[0]
        if n < have:  # rows n.. ended at the step before
            ended.append(tuple(s[n:] for s in state))
            state = tuple(s[:n] for s in state)
        elif n > have:  # rows have..n start here
            state = tuple(torch.cat([s, s0[have:n]]) for s, s0 in zip(state, initial))
        state = advanced(mode, projected[starts[t] : starts[t] + n], state, w_hh, b_hh, w_hr)
        outputs[t] = state[0]
    if ended:  # the rows that ended last come first
        state = tuple(torch.cat(parts) for parts in zip(state, *reversed(ended)))
    return torch.cat(outputs), state


def _masked(mode: str, x, lengths: list, running: list, initial: tuple, weights: tuple, reverse: bool):
    """One layer in one direction over the padded (L, R, D) sequences x in the call's order: every
    step on all R rows (DeepLift's rules find their pairs by position), a row that is not running
    (ended, or in reverse not yet started) held at its initial state by the mask ``running[t]``
    (None: all run). Returns the (L, R, H) outputs (past a sequence's end: not used) and each
    row's final state (forward: at its last step)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    projected = F.linear(x, w_ih, b_ih)
    state, outputs, states = initial, [None] * x.shape[0], [None] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        state = advanced(mode, projected[t], state, w_hh, b_hh, w_hr)
        if running[t] is not None:
            state = tuple(torch.where(running[t], a, s0) for a, s0 in zip(state, initial))
        outputs[t], states[t] = state[0], state
    if not reverse and running[-1] is not None:  # a sequence that ended early: its state at its last step
        last, rows = torch.tensor(lengths, device=x.device) - 1, torch.arange(len(lengths), device=x.device)
        state = tuple(torch.stack(per_step)[last, rows] for per_step in zip(*states))
    return torch.stack(outputs), state


def _running(lengths: list, device) -> list:
    """Per step, the (R, 1) mask of the rows still running, or None where all are."""
    masks = []
    for t in range(max(lengths)):
        flags = [length > t for length in lengths]
        masks.append(None if all(flags) else torch.tensor(flags, device=device).unsqueeze(-1))
    return masks


def _lengths(sizes: list) -> list:
    """Each packed sequence's length from the batch sizes per step (non-increasing)."""
    lengths = [0] * sizes[0]
    for t, n in enumerate(sizes):
        lengths[n - 1] = t + 1  # the last sequence still running at step t runs at least t + 1 steps
    for i in reversed(range(len(lengths) - 1)):
        lengths[i] = max(lengths[i], lengths[i + 1])
    return lengths


def _padded(data, sizes: list):
    """Packed (S, D) data as (L, N, D), zeros past each sequence's end."""
    steps, start, n = [], 0, sizes[0]
    for size in sizes:
        step = data[start : start + size]
        steps.append(step if size == n else torch.cat([step, step.new_zeros((n - size,) + tuple(step.shape[1:]))]))
        start += size
    return torch.stack(steps)


def _repacked(x, sizes: list):
    """(L, N, F) outputs in the packed order back to packed (S, F) data."""
    return torch.cat([x[t, :size] for t, size in enumerate(sizes)])


def _call_order(name: str, data, hx: tuple, lengths: list):
    """Under DeepLift's paired rows, (to_call, to_packed, lengths): index tensors taking the packed
    rows to the call's own order and back, and the lengths in the call's order; else None (NOTE:
    [Packed sequences written out])."""
    rows, _, shared = _ROWS.get()[:3]
    if rows is None or not (differentiated(data) or any(differentiated(s) for s in hx)):
        return None  # nothing paired, or nothing this layer computes is differentiated: no pairing to keep
    n = len(lengths)
    if n != rows:
        raise NotImplementedError(_REFUSED.format(
            name, f"DeepLift runs each example with its reference in one call of {rows} rows, and this packed batch "
            f"holds {n} sequences, so they cannot be paired with their references; pack one sequence per row of the "
            "batch"))
    sorted_indices = _sorted_indices(data)
    to_packed = torch.arange(n) if sorted_indices is None else sorted_indices.to("cpu", torch.long)
    to_call = torch.empty_like(to_packed)
    to_call[to_packed] = torch.arange(n)  # the packed position of each row of the call
    in_call = [lengths[i] for i in to_call.tolist()]
    _check_pairs(name, in_call, rows, shared)
    return to_call.to(data.device), to_packed.to(data.device), in_call


def _check_pairs(name: str, lengths: list, rows: int, shared: int) -> None:
    """Refuses an example whose reference row runs another number of steps."""
    inputs = rows - shared if shared else rows // 2
    for j in range(inputs):
        partner = inputs + j // (inputs // shared) if shared else j + inputs
        if lengths[j] != lengths[partner]:
            raise NotImplementedError(_REFUSED.format(
                name, f"DeepLift pairs row {j} of its call, of length {lengths[j]}, with its reference row {partner}, "
                f"of length {lengths[partner]}: through a packed layer a pair must run the same steps. Pass the lengths "
                "as an argument beside the inputs (the references then take their examples' lengths), and let "
                "pack_padded_sequence sort them (enforce_sorted=False) rather than reordering the rows before it"))


def _sorted_indices(data):
    """``sorted_indices`` of the PackedSequence whose ``data`` this call runs on, from the nearest
    calling frames that hold it (torch's ``nn.LSTM.forward``: ``orig_input``); None where none
    does or where it has none (``enforce_sorted=True``: the rows are in the data's own order)."""
    frame = sys._getframe(2)
    for _ in range(_FRAMES):
        if frame is None:
            return None
        for value in frame.f_locals.values():
            if isinstance(value, PackedSequence) and value.data is data:
                return value.sorted_indices
        frame = frame.f_back
    return None
