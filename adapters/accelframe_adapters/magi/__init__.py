"""MAGI-1: its DiT, staged-window schedule, checkpoint layout and the ``magi-1`` adapter."""
