"""Uneven padding of strided layers, input sizes that avoid it, and padding modes other than zeros.

NOTE: [Uneven padding]
Along one spatial dim a convolution or pooling layer pads its input of n rows with pl rows in
front and pr behind, a padded input of L = n + pl + pr rows, and reads it with windows of k
taps d apart (span e = d (k - 1) + 1) that start every s rows: window o covers rows
o s + j d, j = 0..k-1, of the padded input. With out windows the last row read is
(out - 1) s + e - 1, so the last
  unread = L - (out - 1) s - e
rows are never read; for a convolution or a floor-mode pool, out = floor((L - e) / s) + 1 and
unread = (L - e) mod s. (A ceil-mode pool's last window may hang over the end; then unread
counts the rows after the last row one of its taps lands on inside the padded input, 0 unless
dilation makes a tap skip them.) Nothing behind the last window reaches the output: the right padding
is read less than the left one (or not at all), or the last input rows are skipped. Alsallakh,
Kokhlikyan, Miglani, Yuan and Reblitz-Richardson ("Mind the Pad -- CNNs Can Develop Blind
Spots", ICLR 2021) show that stacked strided layers turn this into skewed artifacts and blind
spots, and that input sizes for which every strided layer consumes its input exactly avoid it.
`uneven_padding` reports, per layer call and dim, the unread rows, how many of them are input
rows, how many input rows no window reads anywhere (a 1x1 stride-2 convolution reads every
other row), and how many left and right padding rows are read: the read padding is asymmetric
when these two counts differ (a ``padding="same"`` convolution of even kernel pads one row more
behind at any size). The window count is the layer's observed output size, so ceil-mode rules
need no formula of ours.

Adaptive pools are left out: their windows (start floor(i n / m), end ceil((i + 1) n / m)) tile
the whole input and they have no padding. Transposed convolutions are left out too: they pad
nothing (their ``padding`` crops the output) and accept only zero padding. Fractional max pools
are random and left out.

NOTE: [Tracing layer input sizes]
The input size each layer sees comes from one forward pass of a zeros batch of one under
``torch.no_grad``, with forward hooks on the convolution and pooling modules that record the
spatial sizes of each call; they are removed in a ``finally``. The pass runs in eval mode (each
module's own train/eval flag is put back afterwards), so batch-norm statistics are not updated
and dropout draws no random numbers. `even_input_sizes` stops each pass once every layer call
of the reference size has been recorded, so a head that accepts one size only (a ``Flatten``
and ``Linear`` after the convolutions) does not stop the search; a candidate on which the model
fails before that point (a kernel larger than its input) is not an even size.

NOTE: [Padding modes of pooling layers]
Pooling layers have no ``padding_mode``, and `with_padding_mode` leaves them as they are. A max
pool pads with -inf, which never wins the max, so it adds no value of its own; an average pool
with ``count_include_pad=False`` averages the real rows only. Both map a constant input to the
same constant everywhere. An average pool with padding and ``count_include_pad=True`` averages
padding zeros in and keeps a zero-padding border: `with_padding_mode` warns about it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .padding_bias import _shape
from .progress import progress
from .warn import warn

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
          nn.AvgPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2}  # fmt: skip
if hasattr(nn, "LPPool3d"):
    _POOLS[nn.LPPool3d] = 3
MODES = ("zeros", "reflect", "replicate", "circular")


def _dims(module: nn.Module) -> int | None:
    for table in (_CONVS, _POOLS):
        for cls, nd in table.items():
            if isinstance(module, cls):
                return nd
    return None


def _tuple(v, nd: int) -> tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def _geometry(module: nn.Module, nd: int):
    """kernel, stride, ((left, right) padding per dim), dilation, ceil_mode of a layer."""
    kernel = _tuple(module.kernel_size, nd)
    stride = kernel if getattr(module, "stride", None) is None else _tuple(module.stride, nd)
    dilation = _tuple(getattr(module, "dilation", 1), nd)
    padding = getattr(module, "padding", 0)
    if padding == "valid":
        padding = 0
    if padding == "same":  # as torch splits it: the smaller half in front
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        pads = tuple((t // 2, t - t // 2) for t in totals)
    else:
        pads = tuple((p, p) for p in _tuple(padding, nd))
    return kernel, stride, pads, dilation, bool(getattr(module, "ceil_mode", False))


@dataclass(frozen=True)
class LayerPadding:
    """How one call of a convolution or pooling layer reads its padded input, per spatial dim
    (NOTE: [Uneven padding] in ``xattr/_src/padding_remedies.py``).

    ``unread``: rows at the end of the padded input that no window reads; ``unread_input``: how
    many of them are input rows; ``skipped``: input rows no window reads anywhere;
    ``pad_read``: (left, right) padding rows read; ``asymmetric``: the two differ.

    Example:
      >>> rec = xattr.uneven_padding(model, (1, 28, 28))[0]
      >>> rec.name, rec.unread, rec.asymmetric      # e.g. ("0", (1, 1), (True, True))
    """

    name: str
    call: int
    layer: str
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    unread: tuple[int, ...]
    unread_input: tuple[int, ...]
    skipped: tuple[int, ...]
    pad_read: tuple[tuple[int, int], ...]
    asymmetric: tuple[bool, ...]

    @property
    def uneven(self) -> bool:
        """Some rows at the end of the padded input are never read."""
        return any(u > 0 for u in self.unread)


def _x(values) -> str:
    return "x".join(str(v) for v in values)


class UnevenPadding(list):
    """The list of `LayerPadding` records of `uneven_padding`, in call order, with `summary`.

    Example:
      >>> report = xattr.uneven_padding(model, (1, 28, 28))
      >>> print(report.summary()); report.uneven     # the records of the asymmetric calls
    """

    @property
    def uneven(self) -> list[LayerPadding]:
        return [r for r in self if r.uneven]

    def summary(self) -> str:
        head = ("layer", "type", "input", "kernel", "stride", "pad", "dil", "output", "unread",
                "of input", "pads read", "")  # fmt: skip
        rows = [head]
        for r in self:
            name = r.name if r.call == 0 else f"{r.name}#{r.call}"
            pads = ",".join(f"{a}+{b}" for a, b in r.padding)
            read = ",".join(f"{a}+{b}" for a, b in r.pad_read)
            flags = []
            if any(r.asymmetric):
                flags.append("asymmetric")
            if any(r.skipped):
                flags.append(f"skips {_x(r.skipped)} rows")
            rows.append((name or "<model>", r.layer, _x(r.input_size), _x(r.kernel), _x(r.stride), pads,
                         _x(r.dilation), _x(r.output_size), _x(r.unread), _x(r.unread_input), read,
                         ", ".join(flags)))  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        bad = self.uneven
        lines.append(f"{len(bad)} of {len(self)} layer calls leave rows unread"
                     + (": " + ", ".join(r.name or "<model>" for r in bad) if bad else ""))  # fmt: skip
        return "\n".join(lines)


def _reads(n: int, k: int, s: int, pads: tuple[int, int], d: int, out: int):
    """(unread, unread_input, skipped, (left, right) pads read) along one dim, from the windows."""
    # NOTE: [Uneven padding]
    left, right = pads
    size = n + left + right
    covered = torch.zeros(size, dtype=torch.bool)
    pos = (torch.arange(out)[:, None] * s + torch.arange(k)[None, :] * d).reshape(-1)
    covered[pos[pos < size]] = True
    unread = size - 1 - int(pos[pos < size].max())  # window 0 starts at row 0
    inner = covered[left:left + n]
    return (unread, min(n, max(0, unread - right)), int((~inner).sum()),
            (int(covered[:left].sum()), int(covered[left + n:].sum())))  # fmt: skip


def _record(name: str, call: int, module: nn.Module, nd: int, in_size, out_size) -> LayerPadding:
    kernel, stride, pads, dilation, ceil = _geometry(module, nd)
    per = [_reads(*a) for a in zip(in_size, kernel, stride, pads, dilation, out_size)]
    return LayerPadding(name=name, call=call, layer=type(module).__name__, input_size=tuple(in_size),
                        output_size=tuple(out_size), kernel=kernel, stride=stride, padding=pads,
                        dilation=dilation, ceil_mode=ceil, unread=tuple(p[0] for p in per),
                        unread_input=tuple(p[1] for p in per), skipped=tuple(p[2] for p in per),
                        pad_read=tuple(p[3] for p in per),
                        asymmetric=tuple(p[3][0] != p[3][1] for p in per))  # fmt: skip


class _Stop(Exception):
    pass


def _trace(model: nn.Module, shape, dtype, device, stop_after: int | None = None) -> UnevenPadding:
    """Records of the layer calls of one forward pass on zeros."""
    # NOTE: [Tracing layer input sizes]
    first = next(model.parameters(), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    if dtype is None:
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    records = UnevenPadding()
    calls: dict[str, int] = {}

    def hook(name, nd, module, args, kwargs, out):
        inp = args[0] if args else next(iter(kwargs.values()))
        out = out[0] if isinstance(out, (tuple, list)) else out
        call = calls.get(name, 0)
        calls[name] = call + 1
        records.append(_record(name, call, module, nd, inp.shape[-nd:], out.shape[-nd:]))
        if stop_after is not None and len(records) >= stop_after:
            raise _Stop

    flags = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        for name, m in model.named_modules():
            nd = _dims(m)
            if nd is not None:
                handles.append(m.register_forward_hook(
                    lambda mod, a, kw, o, name=name, nd=nd: hook(name, nd, mod, a, kw, o), with_kwargs=True))  # fmt: skip
        model.eval()
        with torch.no_grad():
            try:
                model(torch.zeros((1, *shape), dtype=dtype, device=device))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
    return records


def uneven_padding(model: nn.Module, input_shape, *, dtype: torch.dtype | None = None, device=None) -> UnevenPadding:
    """How every convolution and pooling layer of ``model`` reads its padded input.

    See NOTE: [Uneven padding] and NOTE: [Tracing layer input sizes] in
    ``xattr/_src/padding_remedies.py``. Covers Conv1d/2d/3d, MaxPool, AvgPool and LPPool
    (1d/2d/3d); adaptive pools and transposed convolutions are left out (they read every row).

    Args:
      model: an ``nn.Module`` taking one image batch; its parameters, buffers and train/eval
        mode are left unchanged, and no hook stays on it.
      input_shape: one example's shape without the batch dim, e.g. ``(1, 28, 28)``.
      dtype, device: of the zeros input; by default those of the model's first parameter.

    Returns:
      An `UnevenPadding` list of `LayerPadding` records, one per layer call in call order (a
      module called twice gives two, ``call`` 0 and 1), each with the input and output size,
      kernel, stride, (left, right) padding, dilation and per spatial dim the unread rows;
      ``.summary()`` gives a table, ``.uneven`` the records with unread rows.

    Example:
      >>> print(xattr.uneven_padding(model, (1, 28, 28)).summary())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"uneven_padding needs an nn.Module model, got {type(model).__name__}")
    shape = _shape(input_shape)
    try:
        records = _trace(model, shape, dtype, device)
    except Exception as err:
        raise ValueError(f"the model fails on a zeros input of shape {(1, *shape)}: {type(err).__name__}: {err}") from err
    if not records:
        raise ValueError("the model called no convolution or pooling layer (Conv1d/2d/3d, MaxPool, AvgPool, "
                         "LPPool) on this input: there is no padding to analyse")  # fmt: skip
    return records


def _spatial(model: nn.Module, near, channels):
    first = next((m for m in model.modules() if _dims(m) is not None), None)
    if first is None:
        raise ValueError("the model has no convolution or pooling layer (Conv1d/2d/3d, MaxPool, AvgPool, LPPool)")
    if isinstance(near, int) and not isinstance(near, bool):
        near = (near,) * _dims(first)
    if not isinstance(near, (tuple, list, torch.Size)) or not near:
        raise TypeError(f"near must be an int or a tuple of ints (the spatial size, no channels), got {near!r}")
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, tuple(_CONVS))), None)
        if conv is None:
            raise ValueError("cannot tell the input's channels: the model has no convolution; pass channels=")
        channels = conv.in_channels
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    return tuple(_shape(tuple(near))), channels


def even_input_sizes(
    model: nn.Module,
    near,
    *,
    radius: int = 8,
    channels: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    show_progress: bool = False,
) -> tuple[list[int], ...]:
    """Input sizes near ``near`` for which no convolution or pooling layer leaves rows unread.

    Each spatial dim is searched on its own: the sizes ``near[i] - radius .. near[i] + radius``
    (at least 1) of dim ``i``, the other dims at ``near``, each tested by `uneven_padding`'s
    analysis (one forward pass, stopped after the last layer call: NOTE: [Tracing layer input
    sizes]). A size is even when no layer call has unread rows in dim ``i`` (a layer's spatial
    dims are matched to the input's from the last one). Sizes on which the model fails before
    its last layer call are not even.

    Args:
      model: an ``nn.Module`` taking one image batch; left unchanged, no hook stays on it.
      near: the spatial size (an int for every dim, or a tuple), without channels; the model
        must run on it.
      radius: how far to search on each side, an int >= 0.
      channels: the input's channels (default: ``in_channels`` of the model's first convolution).
      dtype, device: of the zeros inputs (default: of the model's first parameter).
      show_progress: a progress bar over the forward passes (needs tqdm).

    Returns:
      A tuple with one list per spatial dim: the even sizes, nearest first (ties: the smaller
      first). ``tuple(s[0] for s in sizes)`` is the nearest even shape where every list has one.

    Example:
      >>> xattr.even_input_sizes(model, (28, 28), channels=1)   # ([25, 33], [25, 33])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"even_input_sizes needs an nn.Module model, got {type(model).__name__}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    near, channels = _spatial(model, near, channels)
    calls = len(uneven_padding(model, (channels, *near), dtype=dtype, device=device))
    m = len(near)
    tasks = [(i, size) for i in range(m) for size in range(max(1, near[i] - radius), near[i] + radius + 1)]
    found: list[list[int]] = [[] for _ in range(m)]
    for i, size in progress(show_progress, tasks, total=len(tasks), desc="even_input_sizes", unit="size"):
        shape = (channels, *near[:i], size, *near[i + 1:])
        try:
            records = _trace(model, shape, dtype, device, stop_after=calls)
        except Exception:  # the model cannot take this size
            continue
        if len(records) < calls:
            continue
        if all(r.unread[len(r.unread) - m + i] == 0 for r in records if len(r.unread) - m + i >= 0):
            found[i].append(size)
    return tuple(sorted(f, key=lambda size, c=c: (abs(size - c), size)) for f, c in zip(found, near))


def with_padding_mode(model: nn.Module, mode: str, *, input_shape=None) -> nn.Module:
    """A deep copy of ``model`` whose padded convolutions pad in ``mode``.

    Every ``Conv1d/2d/3d`` with nonzero padding gets ``padding_mode = mode``; its weights,
    padding sizes and everything else stay as they are, and so does the user's model. Pooling
    layers have no padding mode and are left unchanged: NOTE: [Padding modes of pooling
    layers] (average pools that count zero padding in get a warning). Transposed convolutions
    accept zero padding only and are left unchanged.

    Args:
      model: an ``nn.Module`` with at least one convolution.
      mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      input_shape: one example's shape without the batch dim; when given, the layers' input
        sizes are traced (as in `uneven_padding`) and a mode that cannot pad them is refused now
        (reflect needs padding < size, circular padding <= size, per dim) instead of failing at
        the first forward pass.

    Returns:
      The new model, in the same train/eval mode.

    Example:
      >>> reflect = xattr.with_padding_mode(model, "reflect", input_shape=(1, 28, 28))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"with_padding_mode needs an nn.Module model, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    convs = [name for name, m in model.named_modules() if isinstance(m, tuple(_CONVS))]
    if not convs:
        raise ValueError("the model has no convolution layer (Conv1d/2d/3d): there is no padding mode to set")
    if input_shape is not None and mode in ("reflect", "circular"):
        for r in uneven_padding(model, input_shape):
            if r.layer not in {c.__name__ for c in _CONVS}:
                continue
            for dim, ((a, b), n) in enumerate(zip(r.padding, r.input_size)):
                if max(a, b) >= n if mode == "reflect" else max(a, b) > n:
                    rule = "smaller than" if mode == "reflect" else "at most"
                    raise ValueError(
                        f"{mode} padding is impossible at layer {r.name!r}: it pads dim {dim} of its "
                        f"{_x(r.input_size)} input by {max(a, b)}, and {mode} padding must be {rule} the "
                        f"input size; use 'replicate', a larger input, or less padding there")
    out = copy.deepcopy(model)
    padded = 0
    for m in out.modules():
        if isinstance(m, tuple(_CONVS)) and any(p for pair in _geometry(m, _dims(m))[2] for p in pair):
            m.padding_mode = mode
            padded += 1
    if padded == 0:
        warn("with_padding_mode: no convolution of the model pads its input; the copy computes the same")
    # NOTE: [Padding modes of pooling layers]
    zero_pools = [name for name, m in model.named_modules()
                  if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and m.count_include_pad
                  and any(_tuple(m.padding, _dims(m)))]  # fmt: skip
    if zero_pools:
        warn(f"with_padding_mode: the average pools {', '.join(zero_pools)} pad with zeros and count them "
             "(count_include_pad=True), which has no padding mode; set count_include_pad=False on them to "
             "drop the zeros from their border averages")  # fmt: skip
    return out
