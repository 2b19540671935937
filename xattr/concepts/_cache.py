"""On-disk cache of concept activations and CAVs: plain tensors only, loaded with weights_only=True.

NOTE: [A cache that cannot run code]
Captum pickles whole objects (numpy arrays, concept lists) and must unpickle them with arbitrary
globals allowed. Here every cached file is ``torch.save`` of a dict whose values are tensors,
ints, floats or bools (checked before writing), and every read is
``torch.load(..., weights_only=True)``, which refuses anything else: a planted file can at worst
fail to load, never execute. Files are written to a temporary name and renamed into place, so
an interrupted or concurrent run (another process, or another thread writing the same
key) never leaves half a file. Keys name what a file depends on:
``<cache_dir>/<model key>/activations/<concept name-id[-tag]>-<layer>.pt`` and
``<cache_dir>/<model key>/cavs/<concept>-<negative>-<layer>-<classifier and seed hash>.pt``,
where the model key is ``model_id`` or a fingerprint of the model's class, structure,
parameters, buffers and train/eval flags. A concept is identified by its id, name and tag (the
id and name as in Captum; drawn random concepts carry a digest of their examples as the tag):
change its examples, change its id, name or tag, or clear the cache. A function classifier is
identified by its code and the values it reads, or not cached (NOTE: [Naming a classifier
function]). Files load on the CPU; TCAV moves them to the model's device.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import threading

import torch

from .._src.checks import _modules

_PLAIN = (torch.Tensor, bool, int, float)


def fingerprint(f) -> str:
    """A short key for the model behind ``f``: its class, structure, parameters, buffers and modes.

    Example:
      >>> xattr.concepts.fingerprint(model)     # e.g. "Net-b1bff80f8b110dd8"; changes with the weights
    """
    mods = _modules(f)
    if not mods:
        raise TypeError(
            "the model function wraps no nn.Module to fingerprint; give model_id=... to name it for the cache"
        )
    h = hashlib.sha256()
    for m in mods:
        h.update(repr(m).encode())
        h.update(bytes(mm.training for mm in m.modules()))
        for name, t in itertools.chain(m.named_parameters(), m.named_buffers()):
            h.update(f"{name}:".encode())
            update_digest(h, t)
    return f"{type(mods[0]).__name__}-{h.hexdigest()[:16]}"


def update_digest(h, t: torch.Tensor) -> None:
    """Feeds a tensor's dtype, shape and bytes to the hash ``h`` (whatever its device)."""
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def digest(tensors) -> str:
    """A short hex digest of a sequence of tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        update_digest(h, t)
    return h.hexdigest()[:12]


def safe_name(key: str) -> str:
    """A file name for ``key``: its readable characters, then a hash of the whole key."""
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", key)[:80]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _check_plain(obj, where: str = "value") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cache keys must be strings, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"only tensors and numbers are cached; {where} is a {type(obj).__name__}")


def save_plain(path: str, obj: dict) -> None:
    """``torch.save`` of a dict of tensors/numbers, atomically (NOTE: [A cache that cannot run code])."""
    _check_plain(obj)
    obj = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in obj.items()}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"  # a writer's own: threads of one process too
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # an interrupted write leaves no temporary file either
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def load_plain(path: str) -> dict | None:
    """The dict stored at ``path`` (None if there is none), read with ``weights_only=True``."""
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class Cache:
    """Activations and CAVs of one model under ``<root>/<model key>/``."""

    def __init__(self, root: str, model_key: str):
        plain = re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", model_key)
        self.dir = os.path.join(os.fspath(root), model_key if plain else safe_name(model_key))

    def path(self, kind: str, key: str) -> str:
        return os.path.join(self.dir, kind, safe_name(key) + ".pt")

    def load(self, kind: str, key: str) -> dict | None:
        return load_plain(self.path(kind, key))

    def save(self, kind: str, key: str, obj: dict) -> None:
        save_plain(self.path(kind, key), obj)
