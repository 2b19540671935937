"""Recurrent layers written out step by step (`Unfused` runs them): ``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh``, ``torch.rnn_relu`` and their cells.

NOTE: [Recurrent layers written out]
``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells each run as one fused torch call (kind
``"fused_recurrent"``), whose gates and activations no rule sees: DeepLift's sum missed the change
through the gates (|delta| 0.066 where |f| was 0.18 on a bias-free LSTM, 0.20 of 0.42 on a GRU),
and LRP had nothing to conserve relevance with. Under `Unfused` the mode answers such a call with
the function below, run with the mode on again: a Python loop over the time steps whose every
step is made of calls the rules see (torch's equations, ``x`` the step's input, ``h``, ``c`` the
states):

    LSTM: i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of  W_ih x + b_ih + W_hh h + b_hh
          c' = f * c + i * g,   h' = o * tanh(c')   (then h' = W_hr h' with proj_size)
    GRU:  r, z = sigmoid of  W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h' = (1 - z) * n + z * h
    RNN:  h' = tanh (or relu) of  W_ih x + b_ih + W_hh h + b_hh

``F.linear`` for the projections (the input's for all steps at once), ``torch.sigmoid``,
``torch.tanh`` and ``torch.relu`` for the activations, and `gated` for each product of a gate and
the signal it scales: kind ``"product"``, so DeepLift's `Product` (averaged factors: exact) and
LRP's `FixedGate` rule them, the latter as Arras et al. 2017 do: the gate (the first factor) is
held constant and the signal takes the product's whole relevance. So under DeepLift's mapping
every step conserves and summation-to-delta holds through the layer (1e-15 in float64), and under
LRP relevance is conserved where the biases are zero (they absorb their share otherwise).
Multi-layer and bidirectional layers, ``batch_first`` both ways, biases or none, given initial
states (differentiated or not), an LSTM's ``proj_size`` and the cells are written out; unbatched
(2-d) inputs reach torch's call batched (the modules add the batch dim). The forward equals
torch's to rounding (1e-15 relative in float64, 1e-6 in float32: the additions run in another
order, and a GRU's last step is spelled ``(1 - z) * n + z * h`` where torch computes ``n + z *
(h - n)``), and so does its ordinary gradient. What torch's call does but has no rule-visible
spelling here raises: dropout between layers in training mode (random). PackedSequence inputs
(the packed overloads, ``torch.lstm(data, batch_sizes, ...)``) are written out too, by the same
steps over the sequences still running (NOTE: [Packed sequences written out] in
written_packed.py; they were refused before). The cost is the loop: about 10 ruled calls per
step and direction instead of one fused call (docs/rules.md gives the measured times).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function_variadic

_REFUSED = ("xattr.rule.Unfused cannot write this {} call out: {}. Leave torch.lstm out of the mapping (the key stands "
            "for every recurrent op) to give the layer its ordinary gradient; rules do not then reach inside it.")


def gated(gate: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """``gate * signal``: a product of two activations (kind ``"product"``) whose first factor is a
    gate (NOTE: [Recurrent layers written out]); `FixedGate` holds it constant, `Product` treats the
    two factors alike. A Python function that dispatches to torch function modes, as
    ``F.multi_head_attention_forward`` does, so the rules' mode sees it as one call and
    ops.py parses it; with no mode on, or none claiming products, it is ``gate * signal``."""
    if has_torch_function_variadic(gate, signal):
        return handle_torch_function(gated, (gate, signal), gate, signal)
    return gate * signal


def _lstm_step(projected, h, c, w_hh, b_hh, w_hr):
    i, f, g, o = (projected + F.linear(h, w_hh, b_hh)).chunk(4, -1)
    c = gated(torch.sigmoid(f), c) + gated(torch.sigmoid(i), torch.tanh(g))
    h = gated(torch.sigmoid(o), torch.tanh(c))
    return (h if w_hr is None else F.linear(h, w_hr)), c


def _gru_step(projected, h, w_hh, b_hh):
    i_r, i_z, i_n = projected.chunk(3, -1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + gated(r, h_n))
    return gated(1 - z, n) + gated(z, h)


def _rnn_step(activation):
    def step(projected, h, w_hh, b_hh):
        return activation(projected + F.linear(h, w_hh, b_hh))

    return step


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN_TANH": _rnn_step(torch.tanh), "RNN_RELU": _rnn_step(torch.relu)}


def unpacked(mode: str, weights: tuple, has_biases: bool) -> tuple:
    """One layer and direction's (w_ih, w_hh, b_ih, b_hh, w_hr) from torch's flat weights (None where absent)."""
    w_ih, w_hh = weights[:2]
    b_ih, b_hh = weights[2:4] if has_biases else (None, None)
    w_hr = weights[-1] if mode == "LSTM" and len(weights) == 3 + 2 * has_biases else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def advanced(mode: str, projected, state: tuple, w_hh, b_hh, w_hr) -> tuple:
    """The states after one step whose input projection is ``projected``: (h, c) or (h,)."""
    if mode == "LSTM":
        return _lstm_step(projected, *state, w_hh, b_hh, w_hr)
    return (_STEPS[mode](projected, state[0], w_hh, b_hh),)


def _direction(mode: str, x, state: tuple, weights: tuple, has_biases: bool, reverse: bool):
    """One layer in one direction over the (L, B, D) sequence x: its (L, B, H) outputs and final states."""
    w_ih, w_hh, b_ih, b_hh, w_hr = unpacked(mode, weights, has_biases)
    projected = F.linear(x, w_ih, b_ih)  # every step's input projection in one call
    outputs = [None] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        state = advanced(mode, projected[t], state, w_hh, b_hh, w_hr)
        outputs[t] = state[0]
    return torch.stack(outputs), state


def refuse_dropout(name: str, num_layers: int, dropout: float, train: bool) -> None:
    if train and dropout > 0 and num_layers > 1:
        raise NotImplementedError(_REFUSED.format(name, f"dropout {dropout} between layers in training mode is random; "
                                                  "call model.eval()"))


def _layers(mode: str, name: str, input, hx: tuple, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """The stacked layers of ``torch.lstm``/``gru``/``rnn_*``: (output, final states per kind)."""
    refuse_dropout(name, num_layers, dropout, train)
    if input.dim() != 3:
        raise ValueError(f"{name}: expected a 3-d input (the module adds an unbatched input's batch dim), got "
                         f"{input.dim()}-d")
    dirs = 2 if bidirectional else 1
    group = len(params) // (num_layers * dirs)
    x = input.transpose(0, 1) if batch_first else input  # (L, B, D)
    finals = []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            out, state = _direction(mode, x, tuple(s[k] for s in hx), tuple(params[k * group : (k + 1) * group]),
                                    has_biases, reverse=d == 1)
            outs.append(out)
            finals.append(state)
        x = torch.cat(outs, -1) if dirs == 2 else outs[0]
    output = x.transpose(0, 1) if batch_first else x
    return (output, *(torch.stack(s) for s in zip(*finals)))


def _packed(mode: str, name: str, *args):
    """The packed overload, ``(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
    bidirectional)``: NOTE: [Packed sequences written out] in written_packed.py."""
    from .written_packed import layers  # noqa: PLC0415 (it imports this module's steps)

    return layers(mode, name, *args)


def lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first=None):
    """``torch.lstm`` written out (NOTE: [Recurrent layers written out]): (output, h_n, c_n)."""
    if isinstance(has_biases, (list, tuple)):  # the packed overload: hx holds batch_sizes, params hx, ...
        return _packed("LSTM", "nn.LSTM", input, hx, tuple(params), has_biases, num_layers, dropout, train,
                       bidirectional, batch_first)
    return _layers("LSTM", "nn.LSTM", input, tuple(hx), params, has_biases, num_layers, dropout, train, bidirectional,
                   batch_first)


def _single(mode: str, name: str):
    def written(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first=None):
        if isinstance(has_biases, (list, tuple)):  # the packed overload, as for lstm
            return _packed(mode, name, input, hx, (params,), has_biases, num_layers, dropout, train, bidirectional,
                           batch_first)
        return _layers(mode, name, input, (hx,), params, has_biases, num_layers, dropout, train, bidirectional, batch_first)

    written.__doc__ = f"``torch.{mode.lower()}`` written out (NOTE: [Recurrent layers written out]): (output, h_n)."
    return written


gru, rnn_tanh, rnn_relu = _single("GRU", "nn.GRU"), _single("RNN_TANH", "nn.RNN"), _single("RNN_RELU", "nn.RNN")


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """``torch.lstm_cell`` written out (``nn.LSTMCell``): (h', c')."""
    return _lstm_step(F.linear(input, w_ih, b_ih), hx[0], hx[1], w_hh, b_hh, None)


def _cell(mode: str):
    def written(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
        return _STEPS[mode](F.linear(input, w_ih, b_ih), hx, w_hh, b_hh)

    written.__doc__ = f"``torch.{mode.lower()}_cell`` written out (NOTE: [Recurrent layers written out]): h'."
    return written


gru_cell, rnn_tanh_cell, rnn_relu_cell = _cell("GRU"), _cell("RNN_TANH"), _cell("RNN_RELU")

WRITTEN = {torch.lstm: lstm, torch.gru: gru, torch.rnn_tanh: rnn_tanh, torch.rnn_relu: rnn_relu, torch.lstm_cell: lstm_cell,
           torch.gru_cell: gru_cell, torch.rnn_tanh_cell: rnn_tanh_cell, torch.rnn_relu_cell: rnn_relu_cell}
