"""accelframe's model-family adapters. One family per module, registered by ``plugin``.

Registered: ``self-forcing``, ``krea-realtime`` and ``skyreels-v2-df`` (the Wan 2.1 family, see
``docs/adapters.md``); MAGI-1 and the embedded tiny world land with their own issues.
"""

__version__ = "0.1.0"
