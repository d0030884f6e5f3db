"""accelframe's model-family adapters. One family per module, registered by ``plugin``.

The families (Self-Forcing, Krea Realtime, SkyReels-V2 diffusion forcing, MAGI-1) land with their
own issues; until then this distribution is installed and discovered but registers no adapter.
"""

__version__ = "0.1.0"
