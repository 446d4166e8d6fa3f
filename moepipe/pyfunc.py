"""Where registered versions logged before the package was regrouped by stage find their model.

Their logged entry point (`pyfunc_model.py`) runs `from moepipe.pyfunc import AvatarGenerator`;
the class now lives in moepipe/registry/pyfunc.py. Their generator files (formats 1 and 2) load
through moepipe/models/export.py as any other.
"""

from moepipe.registry.pyfunc import AvatarGenerator

__all__ = ["AvatarGenerator"]
