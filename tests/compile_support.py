"""Whether torch.compile can run here, for the tests that compile models or attribution functions."""

import pytest
import torch


def compile_available() -> bool:
    try:
        return hasattr(torch, "compile") and torch._dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001
        return False


needs_compile = pytest.mark.skipif(not compile_available(), reason="torch.compile is not supported on this platform")
