"""Registers the built-in policies through the entry-point group ``accelframe``.

Every factory is named as ``"module:attribute"`` and imported on first use
(``accelframe.registry.lazy``), so that registering, ``accelframe plugins`` and
``accelframe --help`` import no torch.
"""

from __future__ import annotations

from typing import Callable

from accelframe import hookimpl
from accelframe.registry import lazy


def _p(target: str) -> Callable[..., object]:
    return lazy(f"accelframe_policies.{target}")


@hookimpl
def accelframe_register_policies(register: Callable[..., None]) -> None:
    register("fixed-batch", _p("fixed_batch:FixedBatch"), kind="batch",
             description="fixed chunk length, up to max_streams streams, oldest pending first")
    register("slo-batch", _p("slo_batch:SLOBatch"), kind="batch",
             description="StreamDiffusionV2: chunk length and batch size from an online-fitted latency model L(T, B)")
    register("rolling-kv", _p("rolling_kv:RollingKV"), kind="batch",
             description="StreamDiffusionV2: rolling KV window with sinks, adaptive sink refresh, RoPE reset")
    register("motion-noise", _p("motion_noise:MotionNoise"), kind="batch",
             description="StreamDiffusionV2: motion-aware noise level for video-to-video chunks (EMA)")
    register("scope", _p("scope:make_scope"), kind="step",
             description="SCOPE: cache / predict (Taylor along sigma) / recompute, selective computation; "
                         "presets 'skyreels-v2', 'magi-1'")
    register("teacache", _p("teacache:TeaCache"), kind="step",
             description="TeaCache: cache while the polynomial-rescaled change of the modulated input stays small")
    register("taylorseer", _p("taylorseer:TaylorSeer"), kind="step",
             description="TaylorSeer: compute every N steps, forecast between (Taylor in step index)")
    register("first-block-cache", _p("first_block_cache:FirstBlockCache"), kind="step",
             description="reuse-only: cache while the probe is close to the last computed call's")
    register("flowcache", _p("flowcache:FlowCache"), kind="step",
             description="FlowCache: per-chunk accumulated change, warm-up, first and last steps computed")
    register("sdvg", _p("sdvg:make_sdvg"), kind="block",
             description="SDVG: accept a draft iff its worst frame's reward >= tau; block 0 always regenerated")
    register("random-routing", _p("random_routing:RandomRouting"), kind="block",
             description="accept drafted blocks at random with a given rate (SDVG's ablation baseline)")

