"""chunk_size bounds the path's memory too: with several chunks the straight line's points are
made chunk by chunk (NOTE: [Path points per chunk]), with the same numbers."""

import pytest
import torch
from torch import nn

import xattr
from xattr._src import layer_paths, paths


@pytest.fixture
def walked(monkeypatch):
    """The number of alphas each walk of a path was asked for."""
    sizes, walk = [], paths._walk

    def counting(w, selected, base, alphas):
        sizes.append(len(alphas))
        return walk(w, selected, base, alphas)

    monkeypatch.setattr(paths, "_walk", counting)
    monkeypatch.setattr(layer_paths, "_walk", counting)
    return sizes


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()


def test_integrated_gradients_walks_each_chunk_alone(walked):
    model, x = _model(), torch.randn(4, 6, dtype=torch.float64)
    f = xattr.target(model, 1)
    whole = xattr.integrated_gradients(f, n_steps=40)(x)
    assert walked == [40]
    walked.clear()
    torch.testing.assert_close(xattr.integrated_gradients(f, n_steps=40, chunk_size=24)(x), whole)
    assert walked and max(walked) <= 24 // 4 and sum(walked) == 40


def test_layer_path_methods_walk_each_chunk_alone(walked):
    model, x = _model(), torch.randn(4, 6, dtype=torch.float64)
    split = xattr.at_layer(xattr.target(model, 2), model[1])
    for method in (xattr.conductance, xattr.internal_influence, xattr.layer_integrated_gradients):
        whole = method(split, n_steps=30)(x)
        walked.clear()
        torch.testing.assert_close(method(split, n_steps=30, chunk_size=8)(x), whole)
        assert walked and max(walked) <= 2, method.__name__


def test_a_custom_path_is_walked_whole_once(walked):
    # a path may take its velocities from neighbouring alphas: it sees all of them at once
    def bent(x, b, alphas):
        a = alphas.reshape((-1,) + (1,) * x.ndim)
        pts = b + a**2 * (x - b)
        return pts, 2 * a * (x - b)

    model, x = _model(), torch.randn(4, 6, dtype=torch.float64)
    fn = lambda **kw: xattr.path_integral(xattr.target(model, 0), path=bent, n_steps=20, **kw)(x)  # noqa: E731
    whole = fn()
    walked.clear()
    torch.testing.assert_close(fn(chunk_size=8), whole)
    assert walked == [20]


def test_a_custom_path_marked_pointwise_is_walked_chunk_by_chunk(walked):
    def bent(x, b, alphas):
        a = alphas.reshape((-1,) + (1,) * x.ndim)
        return b + a**2 * (x - b), 2 * a * (x - b)

    model, x = _model(), torch.randn(4, 6, dtype=torch.float64)
    fn = lambda **kw: xattr.path_integral(xattr.target(model, 0), path=bent, n_steps=20, **kw)(x)  # noqa: E731
    whole = fn()
    bent.pointwise = True
    walked.clear()
    torch.testing.assert_close(fn(chunk_size=8), whole)
    assert walked == [2] * 10
    bent.pointwise = "yes"  # only True counts
    walked.clear()
    fn(chunk_size=8)
    assert walked == [20]
