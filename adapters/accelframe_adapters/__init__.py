"""accelframe's model-family adapters: one family per sub-package (``wan``, ``magi``), registered by
``plugin``.

Registered: ``self-forcing``, ``krea-realtime`` and ``skyreels-v2-df`` (the Wan 2.1 family) and
``magi-1`` (see ``docs/adapters.md``). The embedded tiny world (the ``world`` sub-package) hands its
trained models to ``plugin`` as presets (``presets``), which the adapters run as ``size="world"``.
"""

__version__ = "0.1.0"

# The registration registers the shipped presets as it is imported: importing it here makes them
# known to an adapter built directly, without a plugin manager. It imports no torch.
from accelframe_adapters import plugin as _registration  # noqa: E402,F401
