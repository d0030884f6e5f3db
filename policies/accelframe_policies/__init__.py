"""accelframe's built-in policies, one technique per module, registered by ``plugin``."""

__version__ = "0.1.0"
