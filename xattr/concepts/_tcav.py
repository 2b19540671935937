"""TCAV: testing with concept activation vectors (Kim et al. 2018), as compositions over `at_layer`.

NOTE: [TCAV scores]
For a layer with activation h = act(x), a CAV v (unit, towards the concept) and the model's
output F, the conceptual sensitivity of input x is the directional derivative
``S(x) = dF/dh(x) . v``. Over the inputs X of a class:
  sign_count = |{x : S(x) > 0}| / |X|                   (the paper's TCAV_Q score, in [0, 1])
  magnitude  = sum_x max(S(x), 0) / sum_x |S(x)|        (in [0, 1]; 0.5: no preference)
A score means little alone (NOTE: [Testing TCAV scores against random concepts]): each concept
is scored against R random counterparts and compared with R random CAVs by a t-test.
All layers are taken from one split, so one forward and one backward pass over the inputs give
dF/dh at every layer (K backward passes for ``xattr.outputs``, scoring K classes at once), and one
forward pass per batch of each concept gives its activations at every layer; CAV training is a
small linear problem per (concept, counterpart, layer). Activations and CAVs can be cached on disk
(NOTE: [A cache that cannot run code]).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .._src import tree as T
from .._src.checks import at_least_float32
from .._src.layer_methods import gradient_x_activation, layer_activation
from .._src.layers import Split, at_layer
from .._src.targets import Outputs
from .._src.targets import target as _target
from ._cache import Cache, fingerprint
from ._classifier import CAV, classifier_tag, fit_cav, seed_of
from ._data import Concept, batches, flatten, named_layers, random_concepts, root_module
from ._stats import ttest


def activations(split: Split, data):
    """Flattened layer activations (N, F) of every example in ``data`` (a `Concept` or its data).

    Returns a tensor, or a tuple with one per layer for a split at several layers. One forward
    pass per batch of examples reaches every layer of the split.

    Example:
      >>> h = xattr.concepts.activations(xattr.at_layer(model, model.conv2), stripes)   # (N, C*H*W)
    """
    it = data.batches() if isinstance(data, Concept) else batches(data)
    act, parts = layer_activation(split), None
    for args in it:
        h = act(*args)
        hs = list(h) if split.many else [h]
        parts = [[] for _ in hs] if parts is None else parts
        for p, hl in zip(parts, hs):
            p.append(flatten(hl))
    out = [torch.cat(p) for p in parts]
    return tuple(out) if split.many else out[0]


def cav(split: Split, concept, negative, *, classifier=None, generator=0, test_fraction: float = 0.33):
    """The CAV of ``concept`` against ``negative`` at the layer(s) of ``split``.

    Args:
      split: ``xattr.at_layer(model, layer or [layers], inputs=...)``.
      concept, negative: `Concept`s or example data (a tensor, a tuple of tensors, batches).
      classifier, test_fraction: see `fit_cav` (NOTE: [Which classifier makes the CAV]).
      generator: int seed, torch.Generator or None; each layer gets its own stream.

    Returns:
      A `CAV` (``.vector``, ``.accuracy``, ...), or a tuple of them for several layers.

    Example:
      >>> c = cav(xattr.at_layer(model, model.conv2), stripes, random0, generator=0)
      >>> c.vector.shape, c.accuracy                                  # (C*H*W,), e.g. 0.97
    """
    if not isinstance(split, Split):
        raise TypeError(f"cav needs a Split, xattr.at_layer(model, layer or [layers]); got {type(split).__name__}")
    pos, neg = activations(split, concept), activations(split, negative)
    if not split.many:
        return fit_cav(pos, neg, classifier=classifier, generator=generator, test_fraction=test_fraction)
    base = seed_of(generator)
    return tuple(
        fit_cav(p, n, classifier=classifier, generator=seed_of(base, f"layer{i}"), test_fraction=test_fraction)
        for i, (p, n) in enumerate(zip(pos, neg))
    )


def layer_key(name: str, layer_inputs: bool) -> str:
    return f"{name}.input" if layer_inputs else name


def activation_key(concept: Concept, name: str, layer_inputs: bool) -> str:
    """The cache key of a concept's activations at a layer."""
    return f"{concept.cache_key}-{layer_key(name, layer_inputs)}"


def device_of(module) -> torch.device | None:
    """The device of a module's first parameter or buffer (None without any)."""
    for t in [] if module is None else itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return None


def concept_activations(f, named, concept: Concept, *, layer_inputs=False, cache: Cache | None = None, force=False,
                        device=None):  # fmt: skip
    """[(N, F) per layer] for a concept: cached ones loaded, the rest from one split at those layers.

    NOTE: the cache stores and loads tensors on the CPU, while fresh activations are where the
    model runs; loaded ones are moved to ``device`` (default: the layer's, else the model's, else
    the fresh ones'), so that activations of cached and fresh concepts can be concatenated to
    train a CAV.
    """
    keys = [activation_key(concept, n, layer_inputs) for n, _ in named]
    out = [None] * len(named)
    if cache is not None and not force:
        for i, k in enumerate(keys):
            got = cache.load("activations", k)
            out[i] = None if got is None else got["activations"]
    missing = [i for i, a in enumerate(out) if a is None]
    loaded = [i for i in range(len(named)) if i not in missing]
    if missing:
        split = at_layer(f, [named[i][1] for i in missing], inputs=layer_inputs)
        for i, a in zip(missing, activations(split, concept)):
            out[i] = a
            if cache is not None:
                cache.save("activations", keys[i], {"activations": a})
    fresh = out[missing[0]].device if missing else None
    for i in loaded:
        where = device or device_of(named[i][1]) or device_of(root_module(f)) or fresh
        out[i] = out[i] if where is None else out[i].to(where)
    return out


def layer_gradients(f, named, args: tuple, target=None, *, layer_inputs=False, chunk_size=None) -> list[torch.Tensor]:
    """dF/dh at every layer, flattened to (B, [K,] F): one forward and one backward pass per chunk."""
    batch = T.batch_size(args[0])
    starts = range(0, batch, chunk_size) if chunk_size else [0]
    pieces = []
    for s in starts:
        e = s + chunk_size if chunk_size else batch

        def rows_of(t, s=s, e=e):
            return t[s:e] if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == batch else t

        rows = tuple(T.tree_map(rows_of, a) for a in args)
        t = _target_rows(target, s, e, batch) if chunk_size else target
        fn = f if t is None else _target(f, t)
        split = at_layer(fn, [m for _, m in named], inputs=layer_inputs)
        g = gradient_x_activation(split, multiply=False)(*rows)
        pieces.append([flatten(gl, 2 if split.multi_output else 1) for gl in g])
    return [torch.cat(p) for p in zip(*pieces)]


def _target_rows(target, s: int, e: int, batch: int):
    """The rows s:e of a per-example target: a LongTensor (B,) or ``xattr.outputs`` of a (B, K) tensor."""
    if isinstance(target, torch.Tensor) and target.ndim >= 1 and target.shape[0] == batch:
        return target[s:e]
    idx = target.indices if isinstance(target, Outputs) else None
    if isinstance(idx, torch.Tensor) and idx.ndim == 2 and idx.shape[0] == batch:
        return Outputs(idx[s:e])
    return target


def _cached_cav(cache: Cache | None, key: str, device) -> CAV | None:
    """A CAV from the cache, its tensors moved to ``device`` (the cache loads them on the CPU)."""
    got = cache.load("cavs", key) if cache is not None else None
    if got is None:
        return None
    c = CAV.from_dict(got)
    return c if device is None else CAV(c.vector.to(device), c.weights.to(device), c.bias, c.accuracy)


@dataclass(frozen=True)
class TCAVScore:
    """TCAV scores of one concept at one layer (NOTE: [TCAV scores]); R runs, K targets.

    Attributes:
      sign_count, magnitude: (R,) or (R, K): the concept's scores against each random counterpart.
      random_sign_count, random_magnitude: the same for the R random CAVs (the null distribution).
      accuracy: (R,) held-out accuracy of each of the concept's CAV classifiers.
      p_value: () or (K,): two-sided t-test of the tested score against the random scores.
      significant: ``p_value < alpha``.

    Example:
      >>> res = xattr.concepts.tcav(model, ["conv2"], [stripes], zebras, target=3, randoms=pool, generator=0)
      >>> s = res["stripes"]["conv2"]
      >>> s.sign_count.mean(), s.p_value, s.significant
    """

    sign_count: torch.Tensor
    magnitude: torch.Tensor
    random_sign_count: torch.Tensor
    random_magnitude: torch.Tensor
    accuracy: torch.Tensor
    p_value: torch.Tensor
    significant: torch.Tensor

    @property
    def score(self) -> torch.Tensor:
        """The mean sign-count score over the runs: () or (K,)."""
        return self.sign_count.mean(0)


class TCAVResult(dict):
    """``{concept name: {layer name: TCAVScore}}`` with a printable ``summary()``.

    Example:
      >>> res = xattr.concepts.tcav(model, ["conv2"], [stripes], zebras, target=3, randoms=pool, generator=0)
      >>> print(res.summary()); res["stripes"]["conv2"]   # a TCAVScore
    """

    def summary(self) -> str:
        """A table: mean sign-count score and random score (per target), p-value, significance."""

        def fmt(t, spec):
            return " ".join(format(v, spec) for v in t.reshape(-1).tolist())

        rows = [("concept", "layer", "sign_count", "random", "p_value", "significant")]
        for c, per in self.items():
            for l, s in per.items():
                rows.append((c, l, fmt(s.sign_count.mean(0), ".2f"), fmt(s.random_sign_count.mean(0), ".2f"),
                             fmt(s.p_value, ".2g"), fmt(s.significant, "")))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _count(value, name: str, least: int, why: str) -> None:
    """Refuses ``value`` unless it is None or an int (not a bool) of at least ``least``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"tcav: {name} must be an int or None (the default), got {value!r} ({type(value).__name__})")
    if value < least:
        raise ValueError(f"tcav: {name} must be at least {least} ({why}), got {value}")


def _concepts(concepts) -> list[Concept]:
    """``concepts`` as a list of `Concept`s; anything else is refused, saying what it must be."""
    if isinstance(concepts, Concept):
        return [concepts]
    if isinstance(concepts, (str, bytes)) or not hasattr(concepts, "__iter__"):
        raise TypeError(f"tcav: concepts must be a Concept or a list of Concepts, got {type(concepts).__name__}")
    out = list(concepts)
    if not out:
        raise ValueError("tcav: concepts is empty: give at least one Concept")
    for c in out:
        if not isinstance(c, Concept):
            raise TypeError(f"tcav: concepts must be a Concept or a list of Concepts, got a {type(c).__name__} in the list")
    return out


def _randoms(randoms, n_random_runs, random_size, generator) -> list[Concept]:
    # the t-test needs R >= 2 runs, R + 1 random concepts (as the list branch below demands)
    _count(n_random_runs, "n_random_runs", 2, "the significance test needs at least 2 runs")
    is_pool = isinstance(randoms, tuple) and randoms and all(isinstance(t, torch.Tensor) for t in randoms)
    if isinstance(randoms, torch.Tensor) or is_pool:
        pool = randoms
        total = T.batch_size(pool)
        _count(random_size, "random_size", 1, "examples per random concept")
        if random_size is not None and random_size > total:
            raise ValueError(f"tcav: random_size={random_size} is more than the pool's {total} examples")
        size = min(50, total // 2) if random_size is None else random_size
        if size < 1:
            raise ValueError(f"tcav: a pool of {total} example(s) is too small to draw random concepts from; give more")
        runs = 10 if n_random_runs is None else n_random_runs
        return random_concepts(pool, runs + 1, size, generator=seed_of(generator, "randoms"))
    if random_size is not None:
        raise ValueError("tcav: random_size is for a pool of random examples, not for a list of random Concepts")
    if isinstance(randoms, (str, bytes)) or not hasattr(randoms, "__iter__"):
        raise TypeError(f"tcav: randoms must be a list of Concepts or a pool of examples (a tensor), got {type(randoms).__name__}")
    randoms = list(randoms)
    for c in randoms:
        if not isinstance(c, Concept):
            raise TypeError(f"tcav: randoms must be a list of Concepts or a pool of examples (a tensor), got a {type(c).__name__} in the list")
    if n_random_runs is not None:
        if len(randoms) < n_random_runs + 1:
            need = f"n_random_runs={n_random_runs} needs {n_random_runs + 1} random concepts"
            raise ValueError(f"{need}, got {len(randoms)}")
        randoms = randoms[: n_random_runs + 1]
    if len(randoms) < 3:
        raise ValueError("the significance test needs at least 3 random concepts (R + 1 for R >= 2 runs)")
    return randoms


def _scores(g: torch.Tensor, vectors: torch.Tensor):
    """sign_count and magnitude of S = g . v for each vector: g (B, [K,] F), vectors (P, F) -> (P, [K])."""
    wide = at_least_float32(g.dtype)  # scores of a half-precision model: 0.85, not 0.8515625
    d = g.to(wide) @ vectors.to(device=g.device, dtype=wide).T  # (B, [K,] P)
    sign = (d > 0).to(wide).mean(0)
    pos, total = d.clamp_min(0).sum(0), d.abs().sum(0)
    mag = torch.where(total > 0, pos / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))
    return sign.movedim(-1, 0), mag.movedim(-1, 0)


def tcav(f, layers, concepts, inputs, target=None, *, randoms, n_random_runs: int | None = None,
         random_size: int | None = None, classifier=None, generator=0, test_fraction: float = 0.33,
         alpha: float = 0.05, test: str = "sign_count", equal_var: bool = True, null: str = "pairs",
         layer_inputs: bool = False, cache_dir=None, model_id: str | None = None,
         chunk_size: int | None = None) -> TCAVResult:  # fmt: skip
    """TCAV scores of concepts for a model's output at one or more layers, with significance tests.

    For each concept and layer: R CAVs of the concept against the random counterparts
    ``randoms[1:]`` and R random CAVs (``null``); the sign-count and magnitude scores of every CAV
    over ``inputs`` (NOTE: [TCAV scores]); a two-sided t-test of the concept's R scores against
    the R random scores (NOTE: [Testing TCAV scores against random concepts]).

    Args:
      f: the model (or model function); ``target`` picks its output (an int, a LongTensor (B,),
        or ``xattr.outputs([...])`` to score K classes at once: scores gain a K axis).
      layers: a module, a submodule name, a list of them, or a dict {name: module}.
      concepts: a `Concept` or a list of them.
      inputs: the examples to explain (typically of one class): a tensor or a tuple of arguments.
      randoms: random `Concept`s (R + 1 of them), or a pool of example inputs
        from which ``n_random_runs + 1`` random concepts of ``random_size`` examples are drawn.
      n_random_runs: R, an int of at least 2 (default: all given randoms; 10 for a pool).
      random_size: examples per drawn random concept, for a pool only (default: 50, at most
        half the pool).
      classifier, test_fraction: the CAV classifier (NOTE: [Which classifier makes the CAV]).
      generator: int seed, torch.Generator or None; each (concept, counterpart, layer) gets its own
        stream, so results do not depend on the order of concepts or layers.
      alpha: significance level. test: the score tested, "sign_count" or "magnitude".
      equal_var: Student's t-test (True, as Captum's tutorial) or Welch's (False).
      null: the random CAVs: "anchor" (``randoms[0]`` against each counterpart, Kim et al.'s code
        and Captum's tutorial) or "pairs" (``randoms[i]`` against ``randoms[i + 1]``).
      layer_inputs: use the layers' inputs instead of their outputs.
      cache_dir: a directory to cache activations and CAVs in (NOTE: [A cache that cannot run
        code]); model_id names the model there (default: a fingerprint of its weights). The CAVs
        of a function classifier that cannot be identified stably are not cached (NOTE: [Naming
        a classifier function]).
      chunk_size: most inputs per forward/backward pass.

    Returns:
      `TCAVResult`: ``result[concept.name][layer name]`` is a `TCAVScore`.

    Example:
      >>> res = tcav(model, ["conv2", "fc1"], [stripes], zebras, target=zebra_class, randoms=pool, generator=0)
      >>> res["stripes"]["conv2"].score, res["stripes"]["conv2"].significant
    """
    if test not in ("sign_count", "magnitude"):
        raise ValueError(f"test must be 'sign_count' or 'magnitude', got {test!r}")
    if null not in ("anchor", "pairs"):
        raise ValueError(f"null must be 'anchor' or 'pairs', got {null!r}")
    concepts = _concepts(concepts)
    named = named_layers(f, layers)
    randoms = _randoms(randoms, n_random_runs, random_size, generator)
    every = concepts + randoms
    for attr in ("id", "name"):
        values = [getattr(c, attr) for c in every]
        if len(set(values)) != len(values):
            raise ValueError(f"concept {attr}s must be unique across concepts and randoms, got {values}")
    base = seed_of(generator)
    cache = None if cache_dir is None else Cache(cache_dir, model_id or fingerprint(f))
    acts = {c.id: concept_activations(f, named, c, layer_inputs=layer_inputs, cache=cache) for c in every}
    counter, n_runs = randoms[1:], len(randoms) - 1
    pairs = [(c, r) for c in concepts for r in counter]
    if null == "anchor":
        pairs += [(randoms[0], r) for r in counter]
    else:
        pairs += [(randoms[i], randoms[i + 1]) for i in range(n_runs)]
    tag = classifier_tag(classifier)
    cav_cache = cache if tag is not None else None  # NOTE: [Naming a classifier function]
    vectors, accs = [], []  # per layer: (len(pairs), F), (len(pairs),)
    for li, (name, _) in enumerate(named):
        lk, vs, acc = layer_key(name, layer_inputs), [], []
        for p, r in pairs:
            key = f"{p.identifier}-{r.identifier}-{lk}"
            seed = seed_of(base, key)
            full = f"{p.cache_key}-{r.cache_key}-{lk}|{tag}|seed={seed}|test_fraction={test_fraction}"
            c = _cached_cav(cav_cache, full, acts[p.id][li].device)
            if c is None:
                c = fit_cav(acts[p.id][li], acts[r.id][li], classifier=classifier, generator=seed,
                            test_fraction=test_fraction)  # fmt: skip
                if cav_cache is not None:
                    cav_cache.save("cavs", full, c.as_dict())
            vs.append(c.vector)
            acc.append(c.accuracy)
        vectors.append(torch.stack(vs))
        accs.append(torch.tensor(acc))
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    grads = layer_gradients(f, named, args, target, layer_inputs=layer_inputs, chunk_size=chunk_size)
    result = TCAVResult()
    groups = len(concepts) + 1
    for li, (name, _) in enumerate(named):
        sign, mag = _scores(grads[li], vectors[li])
        sign, mag = sign.unflatten(0, (groups, n_runs)).cpu(), mag.unflatten(0, (groups, n_runs)).cpu()
        acc = accs[li].reshape(groups, n_runs)
        tested = sign if test == "sign_count" else mag
        for ci, c in enumerate(concepts):
            _, p = ttest(tested[ci], tested[-1], equal_var=equal_var)
            result.setdefault(c.name, {})[name] = TCAVScore(sign[ci], mag[ci], sign[-1], mag[-1], acc[ci], p, p < alpha)
    return result
