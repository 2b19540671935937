"""Comparison of a compat adapter's result with Captum's stored numbers (shared by test_compat_*)."""

import torch


def assert_matches_stored(out, expected, *, rtol=1e-6, atol=1e-8, detached=True) -> None:
    """out has the structure of expected (tuple <-> tuple, tensor <-> nested list) and its values.

    The default tolerances cover Captum's float32 arithmetic and the 10-digit storage.
    """
    if isinstance(expected, tuple):
        assert isinstance(out, tuple) and len(out) == len(expected), f"expected a tuple of {len(expected)}"
        for o, e in zip(out, expected):
            assert_matches_stored(o, e, rtol=rtol, atol=atol, detached=detached)
        return
    assert isinstance(out, torch.Tensor), f"expected a tensor, got {type(out).__name__}"
    e = torch.tensor(expected, dtype=out.dtype)
    assert out.shape == e.shape, f"shape {tuple(out.shape)} != stored {tuple(e.shape)}"
    assert not (detached and out.requires_grad), "compat results are detached"
    torch.testing.assert_close(out, e, rtol=rtol, atol=atol)
