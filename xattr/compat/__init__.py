"""Drop-in adapters for other attribution libraries' APIs, written over xattr's functional core.

``xattr.compat.captum``: Captum's class names, constructor arguments, ``attribute`` keywords and
return conventions (docs/migration.md).
"""

from . import captum

__all__ = ["captum"]
