"""A model function that reads a per-example tensor from outside its arguments (an attention mask
from an enclosing scope) fails once a method folds copies into the batch; the error says what to
do (NOTE: [Per-example tensors from outside the arguments] in xattr/_src/folded_errors.py)."""

import sys

import pytest
import torch
from torch import nn

import xattr

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="PEP 678 notes need Python 3.11")

torch.manual_seed(0)
LIN = nn.Linear(4, 1).double()
X = torch.randn(3, 4, dtype=torch.float64)
MASK = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)


def closed(x):
    return LIN(x * MASK)[:, 0]  # MASK has 3 rows, whatever x has


def passed(x, mask):
    return LIN(x * mask)[:, 0]


split_closed = xattr.at_layer(closed, LIN)
METHODS = {
    "integrated_gradients": lambda f: xattr.integrated_gradients(f),
    "deep_lift": lambda f: xattr.deep_lift(f, baselines=torch.randn(3, 4, dtype=torch.float64)),
    "gradient_shap": lambda f: xattr.gradient_shap(f, baselines=torch.zeros(2, 4, dtype=torch.float64), generator=0),
    "smoothgrad": lambda f: xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, n_samples=4, generator=0),
    "feature_ablation": lambda f: xattr.feature_ablation(f),
    "occlusion": lambda f: xattr.occlusion(f, sliding_window_shapes=(2,)),
    "shapley_value_sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=2, generator=0),
    "kernel_shap": lambda f: xattr.kernel_shap(f, n_samples=20, generator=0),
    "lime": lambda f: xattr.lime(f, n_samples=20, generator=0),
}


def notes(err):
    return " ".join(getattr(err, "__notes__", []))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_closed_over_mask_gets_a_note_and_passing_it_works(name):
    with pytest.raises((RuntimeError, IndexError)) as info:
        METHODS[name](closed)(X)
    assert "extra argument" in notes(info.value) and "f(ids, mask)" in notes(info.value), notes(info.value)
    assert notes(info.value).count("xattr:") == 1  # once, even through nested methods
    attr = METHODS[name](passed)(X, MASK)  # what the note says to do
    assert attr.shape == X.shape and torch.isfinite(attr).all()


def test_layer_methods_get_it_too():
    with pytest.raises(RuntimeError) as info:
        xattr.layer_integrated_gradients(split_closed)(X)
    assert "extra argument" in notes(info.value)


def test_no_note_where_it_does_not_apply():
    assert torch.equal(xattr.saliency(closed)(X), xattr.saliency(passed)(X, MASK))  # B rows: no copies, no error

    def broken(x):  # fails on the examples as given too: another cause
        return LIN(x * MASK[:2])[:, 0]

    with pytest.raises(RuntimeError) as info:
        xattr.integrated_gradients(broken)(X)
    assert not notes(info.value)

    def not_a_size_error(x):
        if len(x) > 3:
            raise RuntimeError("the model refuses large batches")
        return LIN(x)[:, 0]

    with pytest.raises(RuntimeError) as info:
        xattr.integrated_gradients(not_a_size_error)(X)
    assert not notes(info.value)


def test_an_extra_argument_with_the_examples_in_another_dim_is_named():
    """A DLRM's offsets, one table per row: ``(tables, B)``, passed whole, never tiled; the note names
    it and says what to do (its first advice, pass it as an extra argument, is already taken)."""
    mask_t = MASK.T.contiguous()  # (4 features, 3 examples)

    def transposed(x, m):
        return LIN(x * m.T)[:, 0]

    with pytest.raises(RuntimeError) as info:
        xattr.integrated_gradients(transposed)(X, mask_t)
    said = notes(info.value)
    assert "argument 1 (4, 3) has no dim 0 of 3" in said and "examples in dim 0" in said, said

    def batch_first(x, m):  # what the note says to do
        return LIN(x * m)[:, 0]

    attr = xattr.integrated_gradients(batch_first)(X, mask_t.T)
    torch.testing.assert_close(attr, xattr.integrated_gradients(passed)(X, MASK))
    assert "no dim 0 of" not in notes(_raised(closed))  # every tensor argument has the batch: no sentence


def _raised(f):
    try:
        xattr.integrated_gradients(f)(X)
    except RuntimeError as err:
        return err
    raise AssertionError("no error")


SHARED = {
    "integrated_gradients": lambda f: xattr.integrated_gradients(f, n_steps=8),
    "deep_lift": lambda f: xattr.deep_lift(f),
    "smoothgrad": lambda f: xattr.smoothgrad(xattr.saliency(f), stdevs=0.1, n_samples=4, generator=0),
    "feature_ablation": lambda f: xattr.feature_ablation(f),
    "shapley_value_sampling": lambda f: xattr.shapley_value_sampling(f, n_samples=2, generator=0),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_shared_tensor_whose_dim_0_equals_the_batch_is_named(name):
    """An (L, L) attention mask shared by every example, with L equal to the batch size by
    coincidence, is taken for one row per example and tiled; the note names it and says to give
    it a leading dim of 1, which passes it whole: then the attributions are those of the mask given
    with a row per example, and (deterministic methods) of each example alone."""
    torch.manual_seed(2)
    x = torch.randn(3, 3, 4, dtype=torch.float64)
    mask = torch.zeros(3, 3, dtype=torch.float64)
    mask[0, 2] = -1e9

    def attend(x, m):
        s = x @ x.transpose(1, 2) + m
        return (s.softmax(-1) @ x).sum((1, 2))

    with pytest.raises(RuntimeError) as info:
        SHARED[name](attend)(x, mask)
    said = notes(info.value)
    assert "argument 1 (3, 3) has dim 0 of 3, the batch size" in said and "mask[None]" in said, said
    whole = SHARED[name](attend)(x, mask[None])
    torch.testing.assert_close(whole, SHARED[name](attend)(x, mask.expand(3, 3, 3).contiguous()), rtol=1e-9, atol=1e-12)
    if name in ("integrated_gradients", "deep_lift", "feature_ablation"):
        alone = torch.cat([SHARED[name](attend)(x[i : i + 1], mask[None]) for i in range(3)])
        torch.testing.assert_close(whole, alone, rtol=1e-9, atol=1e-12)
    assert "the batch size, so" not in notes(_raised(closed))  # no extra argument: no sentence
