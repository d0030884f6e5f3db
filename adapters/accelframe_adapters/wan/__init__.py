"""The Wan 2.1 family: DiT, causal VAE, UniPC and flow schedules, text encoders, and the
``self-forcing``, ``krea-realtime`` and ``skyreels-v2-df`` loops."""
