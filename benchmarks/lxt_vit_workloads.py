"""AttnLRP against LXT 2.1's patches for torchvision's VisionTransformer (the Llama workload and
LXT's import are in `lxt_workloads`).

Vision transformers (torchvision's ``VisionTransformer``): LXT ships one patch map for them,
``lxt.efficient.models.vit_torch.cp_LRP``: CP-LRP inside ``nn.MultiheadAttention`` (its query and
key inputs detached, so the attention weights are held and the values take all), the layer norm
with its std detached, GELU's identity rule. Its example adds the gamma rule from zennit (a
``LayerMapComposite`` of ``Gamma`` on ``nn.Conv2d`` and ``nn.Linear``, after ``monkey_patch_zennit``,
which turns zennit's hooks into gradient times input form). The xattr composite that equals it
(`lxt_vit_rules`, tests/test_vs_lxt_vit.py):

- ``attn_lrp_rules(0.0, hold_attention=True)`` with `LxtPass` at GELU: LXT without gamma, to the
  last bits (below 1e-14 of the largest relevance in float64).
- zennit's ``Gamma`` is the generalized rule (Andeol et al. 2021; benchmarks/zennit_workloads.py),
  xattr's `GeneralizedGamma` (which ``attn_lrp_rules(gamma=...)`` uses); xattr's `Gamma` is the
  original one, which on signed inputs (every linear layer of a ViT reads a layer norm's output)
  divides by ``z + gamma sum_i x_i w_ij+``, of either sign (NOTE: [Gamma for signed inputs]).
- zennit's rules sit on modules that are called: ``nn.MultiheadAttention`` computes its in- and
  out-projections with ``F.linear`` on its own parameters (its ``out_proj`` module never runs), so
  they keep their gradient (LRP-0) in LXT's recipe. `lxt_vit_rules` keys gamma by module type
  (``nn.Linear``, ``nn.Conv2d``) to match; ``attn_lrp_rules(gamma=...)`` keys it by ``F.linear``
  and so also reaches the attention projections.
- ``monkey_patch_zennit`` divides each hooked layer's input relevance by ``x + 1e-10 sign(x)``
  (xattr: by x); `LxtGamma(input_eps=1e-10)` does the same.

    python -m benchmarks.lxt_workloads --only ViT      # time both, print a table
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
import torch.nn.functional as F

import xattr
from xattr import rule as xr
from xattr._src.lrp_math import stabilize

from .lxt_workloads import TOL64, LxtPass, _restore, import_lxt, lxt_patched
from .workloads import SEED, Workload


class LxtGamma(xr.GeneralizedGamma):
    """xattr's `GeneralizedGamma` (zennit's gamma, which LXT's ViT example uses) with LXT's input
    stabiliser: ``input_eps`` multiplies the input gradient by ``x / stab(x, input_eps)``, as
    LXT's ``monkey_patch_zennit`` divides each hooked layer's input relevance by ``x + 1e-10
    sign(x)``. For conformance checks."""

    def __init__(self, gamma: float = 0.25, eps: float = 1e-6, input_eps: float | None = None):
        super().__init__(gamma, eps)
        self.input_eps = input_eps

    def __repr__(self):
        return f"LxtGamma({self.gamma}, eps={self.eps}, input_eps={self.input_eps})"

    def backward(self, op, saved, grad):
        g, *rest = super().backward(op, saved, grad)
        if self.input_eps is not None:
            x = saved.inputs[0]
            g = g * x / stabilize(x, self.input_eps)  # x + eps sign(x), sign(0) = 1: zennit's too
        return (g, *rest)


def vit_patches():
    """(torchvision's vision_transformer module, LXT's ``cp_LRP`` patch map for it), or None when
    lxt or torchvision is missing."""
    from xattr.testing.vision import models  # noqa: PLC0415

    if models() is None or import_lxt() is None:
        return None
    import lxt.efficient.models.vit_torch as patches  # noqa: PLC0415

    return patches.vision_transformer, patches.cp_LRP


@contextlib.contextmanager
def zennit_patched():
    """LXT's ``monkey_patch_zennit()`` for the duration (zennit's ``BasicHook`` in gradient times
    input form), every attribute of ``BasicHook`` restored on leaving; yields zennit."""
    from xattr.testing.vision import models  # noqa: PLC0415

    models()  # zennit imports torchvision
    import zennit.composites  # noqa: PLC0415, F401
    import zennit.core  # noqa: PLC0415
    import zennit.rules  # noqa: PLC0415, F401

    import_lxt()
    import lxt.efficient.zennit_patches as zp  # noqa: PLC0415

    hook = zennit.core.BasicHook
    before = dict(vars(hook))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            zp.monkey_patch_zennit()
        failed = [str(w.message) for w in caught if "patch" in str(w.message).lower()]
        if failed:
            raise RuntimeError(f"LXT's monkey_patch_zennit failed: {failed}")
        yield zennit
    finally:
        _restore(hook, before)


def lxt_vit_relevance(model, x, target, *, linear_gamma=None, conv_gamma=None) -> torch.Tensor:
    """LXT's relevance at the pixels of a torchvision ViT, as its example spells it: ``cp_LRP``
    patches, zennit's ``Gamma`` on ``nn.Linear`` / ``nn.Conv2d`` where a gamma is given (after
    ``monkey_patch_zennit``), ``target(model(x)).sum()`` backpropagated, ``x * x.grad`` (taken with
    ``torch.autograd.grad``, which leaves the parameters' ``.grad`` alone)."""
    e = x.detach().clone().requires_grad_(True)
    if linear_gamma is None and conv_gamma is None:
        with lxt_patched(*vit_patches()):
            (grad,) = torch.autograd.grad(target(model(e)).sum(), e)  # no .grad left on the parameters
        return (e * grad).detach()
    with zennit_patched() as zennit, lxt_patched(*vit_patches()):
        layer_rules = [(cls, zennit.rules.Gamma(g)) for cls, g in ((torch.nn.Conv2d, conv_gamma), (torch.nn.Linear, linear_gamma))
                       if g is not None]  # fmt: skip
        composite = zennit.composites.LayerMapComposite(layer_rules)
        with composite.context(model) as hooked:
            (grad,) = torch.autograd.grad(target(hooked(e)).sum(), e)
    return (e * grad).detach()


def lxt_vit_rules(linear_gamma=None, conv_gamma=None, *, lxt_stabilisers: bool = True) -> dict:
    """The xattr composite equal to `lxt_vit_relevance`: ``attn_lrp_rules(0.0, hold_attention=True)``
    (CP-LRP inside attention, LRP-0 elsewhere, `FixedStd` at layer norms), `LxtGamma` keyed by
    ``nn.Linear`` and ``nn.Conv2d`` (so not at the attention's own projections, as in zennit) with
    zennit's stabilizer 1e-6, and LXT's stabilisers (`LxtPass` at GELU, ``input_eps=1e-10``) unless
    ``lxt_stabilisers=False`` (then `Pass` and none)."""
    rules = xr.attn_lrp_rules(0.0, hold_attention=True)
    input_eps = 1e-10 if lxt_stabilisers else None
    if lxt_stabilisers:
        rules[F.gelu] = LxtPass()
    for cls, g in ((torch.nn.Linear, linear_gamma), (torch.nn.Conv2d, conv_gamma)):
        if g is not None:
            rules[cls] = LxtGamma(g, 1e-6, input_eps)
    return rules


def tiny_vit(*, image: int = 32, patch: int = 8, layers: int = 2, heads: int = 2, hidden: int = 32, mlp: int = 64,
             classes: int = 10, seed: int = 0, dtype=torch.float64):
    """A random-weight torchvision ``VisionTransformer`` (nothing downloaded), eval mode. torchvision
    starts the class token and the head at 0 (every relevance 0): both are drawn here, and the
    position embedding is widened to std 0.5 so that it matters."""
    from xattr.testing.vision import models  # noqa: PLC0415

    torch.manual_seed(seed)
    model = models().VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                                       hidden_dim=hidden, mlp_dim=mlp, num_classes=classes)  # fmt: skip
    with torch.no_grad():
        model.class_token.normal_()
        model.encoder.pos_embedding.normal_(std=0.5)
        model.heads.head.weight.normal_(std=hidden**-0.5)
        model.heads.head.bias.normal_(std=0.1)
    return model.to(dtype).eval()


LXT_VIT_GAMMAS = (0.05, 0.25)  # (linear, conv): one of the pairs LXT's ViT example sweeps


def _vit_workload(layers: int = 4, hidden: int = 128, image: int = 64, patch: int = 8, batch: int = 4) -> Workload:
    tokens = (image // patch) ** 2 + 1
    name = f"AttnLRP vs LXT (ViT {layers}x{hidden}, {tokens} tokens, batch {batch}, gamma)"
    model = tiny_vit(image=image, patch=patch, layers=layers, heads=4, hidden=hidden, mlp=2 * hidden, seed=SEED,
                     dtype=torch.float32)  # fmt: skip
    x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(SEED))
    cls, (lin, conv) = 3, LXT_VIT_GAMMAS

    def target(out):
        return out[:, cls]

    def f(v):
        return model(v)[:, cls]

    ours = xattr.lrp(f, composite=lxt_vit_rules(lin, conv, lxt_stabilisers=False))

    def floor():
        e = x.clone().requires_grad_(True)
        f(e).sum().backward()
        return e * e.grad

    def agreement():
        m64, x64 = copy.deepcopy(model).double(), x.double()
        theirs = lxt_vit_relevance(m64, x64, target, linear_gamma=lin, conv_gamma=conv)
        same = xattr.lrp(lambda v: m64(v)[:, cls], composite=lxt_vit_rules(lin, conv))(x64)
        plain = xattr.lrp(lambda v: m64(v)[:, cls], composite=lxt_vit_rules(lin, conv, lxt_stabilisers=False))(x64)
        scale = float(theirs.abs().max())
        d_same, d_plain = float((same - theirs).abs().max()) / scale, float((plain - theirs).abs().max()) / scale
        text = f"float64, max diff / max |R|: {d_same:.1e} with LXT's stabilisers, {d_plain:.1e} without"
        return text, d_same <= TOL64 and d_plain <= 1e-6

    return Workload(name, "other-library", lambda: ours(x), lambda: lxt_vit_relevance(model, x, target, linear_gamma=lin,
                    conv_gamma=conv), {"fwd+bwd": floor}, agreement,
                    f"float64 copies; LXT cp_LRP + zennit Gamma({lin}) linear, Gamma({conv}) conv (its example, hooks "
                    "registered per call); xattr: lxt_vit_rules (GeneralizedGamma by module type, CP-LRP attention)")  # fmt: skip


def build_vit() -> Workload:
    """The ViT workload, skipped with a note when torchvision is missing (lxt is there: the caller
    checked)."""
    if vit_patches() is None:
        return Workload("AttnLRP vs LXT (ViT)", "other-library", None, None, {}, None, "", skip="torchvision is not installed")
    return _vit_workload()
