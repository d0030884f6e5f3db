"""accelframe's model-family adapters. One family per module, registered by ``plugin``.

Registered: ``self-forcing``, ``krea-realtime`` and ``skyreels-v2-df`` (the Wan 2.1 family) and
``magi-1`` (see ``docs/adapters.md``); the embedded tiny world is ``accelframe_adapters.world``.
"""

__version__ = "0.1.0"
