"""torchvision's model zoo for tests and benchmarks (random weights, nothing downloaded).

PyPI's torchvision wheels carry compiled detection ops (nms, roi_align) built against the CUDA
build of torch; beside a CPU build of the same version they fail to register ("operator
torchvision::nms does not exist") and ``import torchvision`` raises, although the model
definitions are plain Python. `models()` imports torchvision normally and, if only that
registration fails, again without it: the classification models then work and the detection
ops are unavailable.
"""

from __future__ import annotations

import sys
import types


def models():
    """``torchvision.models``, or None when torchvision is not installed."""
    try:
        import torchvision
    except ImportError:
        return None
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision.models
