"""Vector norms, ``F.normalize`` and ``F.cosine_similarity`` written as the ops they are made of
(`Unfused` runs them; `exact_deep_lift_rules` maps them there). ops.py adds their parsers.

NOTE: [Vector norms written out]
``torch.linalg.vector_norm``, ``torch.norm``, ``x.norm()`` and ``torch.linalg.norm`` of a vector
are one call each (kind ``"vector_norm"``), with the ordinary gradient ``x / |x|`` where no rule
claims them; under DeepLift that breaks summation-to-delta (``|x|`` of a layer: off by 3.2 where
|f(x) - f(b)| was 3.9). ``F.normalize`` (kind ``"normalize"``) is worse: a Python function the
torch function mode sees as one call, so nothing inside it, not even its division, met a rule
(the cosine of sentence-transformers' mean-pooled MiniLM embedding with an anchor: off by 0.36
of 0.20). ``F.cosine_similarity`` (kind ``"cosine_similarity"``) is one native call. Under
`Unfused` each runs written out, with the mode on:

    p = 2:     sqrt(sum(x * x))            p = 1:  sum(|x|)
    p = inf:   amax(|x|)   (-inf: amin)    other p > 0:  sum(|x| ** p) ** (1 / p)
    normalize:          x / clamp_min(|x|_p, eps)
    cosine_similarity:  sum(x1 / clamp_min(|x1|, eps) * x2 / clamp_min(|x2|, eps))

(sums over the norm's dims; x1 and x2 broadcast first), which is how torch computes them, so
the forward is torch's up to rounding. Under DeepLift ``x * x`` and the quotients take `Product`,
sqrt, abs, pow and the clamp `Rescale`, amax/amin the max rule, each exact, so the call
conserves. Not parsed (the ordinary gradient): p = 0 (a count, piecewise constant), p < 0
other than -inf, a string p other than "fro" (``"nuc"``), a matrix norm of ``torch.linalg.norm``
(two dims, or a 2-d input with ``ord`` and no dim), ``out=``, and tensors that are not floating
point. Half and
bfloat16 inputs are reduced in float32 and cast back, as torch accumulates them. Where an
example and its reference are both the zero vector, sqrt's multiplier would be its derivative
at 0, infinite, times a zero difference (nan): the 2-norm takes the sqrt of the sum raised to
the smallest normal number (`_root`; 1.5e-154 for a zero vector in float64, 1.1e-19 in
float32), so it passes 0 back there, as torch's own backward of a norm at 0 does. Another p
with such a pair gives nan multipliers (pow's derivative at 0 is infinite; torch's backward
passes 0): not guarded, since raising the sum before the root ``1 / p`` would shift a zero
vector's norm by as much as ``tiny ** (1 / p)`` (8e-4 at p = 100).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def vector_norm(x, *, ord, dim, keepdim, dtype):
    """``torch.linalg.vector_norm(x, ord, dim, keepdim, dtype=dtype)`` written out."""
    x = x if dtype is None else x.to(dtype)
    y = x.float() if x.dtype in _HALF else x
    dims = tuple(range(y.ndim)) if dim is None else dim
    if ord == 2:
        out = _root((y * y).sum(dims, keepdim=keepdim))
    elif ord == 1:
        out = y.abs().sum(dims, keepdim=keepdim)
    elif ord == math.inf:
        out = y.abs().amax(dims, keepdim=keepdim)
    elif ord == -math.inf:
        out = y.abs().amin(dims, keepdim=keepdim)
    else:
        out = y.abs().pow(ord).sum(dims, keepdim=keepdim).pow(1.0 / ord)
    return out.to(x.dtype)


def _root(s: torch.Tensor) -> torch.Tensor:
    """sqrt(s) of a sum of squares, raised to the smallest normal number first: where an example
    and its reference are both zero vectors the clamp's multiplier is 0 and sqrt's finite, so the
    call passes 0 back, not 0 * inf (NOTE: [Vector norms written out])."""
    return torch.sqrt(s.clamp_min(torch.finfo(s.dtype).tiny))


def normalize(x, *, p, dim, eps):
    """``F.normalize(x, p, dim, eps)`` written out: the norm through ``torch.linalg.vector_norm``,
    which the mapping rules in its turn."""
    return x / torch.linalg.vector_norm(x, p, dim, keepdim=True).clamp_min(eps).expand_as(x)


def cosine_similarity(x1, x2, *, dim, eps):
    """``F.cosine_similarity(x1, x2, dim, eps)`` written out, in torch's order: each operand
    divided by its clamped norm, then the sum of their product."""
    dtype = torch.result_type(x1, x2)
    x1, x2 = torch.broadcast_tensors(x1.to(dtype), x2.to(dtype))
    n1 = torch.linalg.vector_norm(x1, 2, dim, keepdim=True).clamp_min(eps)
    n2 = torch.linalg.vector_norm(x2, 2, dim, keepdim=True).clamp_min(eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)


WRITTEN = {"vector_norm": vector_norm, "normalize": normalize, "cosine_similarity": cosine_similarity}


def _floats(*tensors) -> bool:
    return all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors)


def _valid(p) -> bool:
    return not isinstance(p, (str, bool)) and isinstance(p, (int, float)) and (p > 0 or p == -math.inf)


def _norm_op(Op, func, x, p, dim, keepdim, dtype):
    """Kind "vector_norm", or None where the call is none the rules write out."""
    if isinstance(dim, int):
        dim = (dim,)
    elif dim is not None:
        dim = tuple(dim)
    if not _floats(x) or not _valid(p) or (dim is not None and not dim):
        return None
    options = {"ord": p, "dim": dim, "keepdim": bool(keepdim), "dtype": dtype}
    return Op("vector_norm", functools.partial(torch.linalg.vector_norm, ord=p, dim=dim, keepdim=keepdim, dtype=dtype),
              (x,), options, func, False)


def _linalg_vector_norm(Op):
    def parse(func, x, ord=2, dim=None, keepdim=False, *, dtype=None, out=None):
        return None if out is not None else _norm_op(Op, func, x, ord, dim, keepdim, dtype)
    return parse


def _torch_norm(Op):
    """``torch.norm(input, p, dim, keepdim, out, dtype)``; ``Tensor.norm`` has no ``out``, and
    its fifth positional argument is ``dtype``."""
    def parse(func, input, p="fro", dim=None, keepdim=False, *rest, out=None, dtype=None):
        if rest:
            if func is torch.Tensor.norm:
                dtype = rest[0]
            else:
                out, dtype = (rest + (dtype,))[:2]
        if out is not None:
            return None
        if p == "fro":  # the 2-norm over dim (all dims, or at most two: torch.norm's rule)
            if dim is not None and not isinstance(dim, int) and len(dim) > 2:
                return None
            p = 2
        elif p is None:
            p = 2
        return _norm_op(Op, func, input, p, dim, keepdim, dtype)
    return parse


def _linalg_norm(Op):
    """``torch.linalg.norm`` where it is a vector norm: one dim, or a 1-d input, or no ord and no
    dim (the 2-norm of every element); a matrix norm is not parsed."""
    def parse(func, x, ord=None, dim=None, keepdim=False, *, dtype=None, out=None):
        if out is not None or not isinstance(x, torch.Tensor):
            return None
        vector = isinstance(dim, int) or (dim is not None and len(dim) == 1) or (dim is None and (x.ndim == 1 or ord is None))
        if not vector:
            return None
        return _norm_op(Op, func, x, 2 if ord is None else ord, dim, keepdim, dtype)
    return parse


def _normalize(Op):
    def parse(func, input, p=2.0, dim=1, eps=1e-12, out=None):
        if out is not None or not _floats(input) or not _valid(p):
            return None
        options = {"p": p, "dim": dim, "eps": eps}
        return Op("normalize", functools.partial(F.normalize, **options), (input,), options, func, False)
    return parse


def _cosine_similarity(func, x1, x2, dim=1, eps=1e-8, *, Op):
    if not _floats(x1, x2):
        return None
    options = {"dim": dim, "eps": eps}
    return Op("cosine_similarity", functools.partial(F.cosine_similarity, **options), (x1, x2), options, func, False)


def spellings(Op) -> list:
    """(torch function, kind, parser) for every spelling of the kinds above."""
    norm = _torch_norm(Op)
    return [(torch.linalg.vector_norm, "vector_norm", _linalg_vector_norm(Op)), (torch.norm, "vector_norm", norm),
            (torch.Tensor.norm, "vector_norm", norm), (torch.linalg.norm, "vector_norm", _linalg_norm(Op)),
            (F.normalize, "normalize", _normalize(Op)),
            (F.cosine_similarity, "cosine_similarity", functools.partial(_cosine_similarity, Op=Op))]
