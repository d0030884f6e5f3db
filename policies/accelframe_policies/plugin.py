"""Registers the built-in policies through the entry-point group ``accelframe``."""

from __future__ import annotations

from typing import Callable

from accelframe import hookimpl
from accelframe_policies.first_block_cache import FirstBlockCache
from accelframe_policies.fixed_batch import FixedBatch
from accelframe_policies.flowcache import FlowCache
from accelframe_policies.motion_noise import MotionNoise
from accelframe_policies.random_routing import RandomRouting
from accelframe_policies.rolling_kv import RollingKV
from accelframe_policies.scope import make_scope
from accelframe_policies.sdvg import make_sdvg
from accelframe_policies.slo_batch import SLOBatch
from accelframe_policies.taylorseer import TaylorSeer
from accelframe_policies.teacache import TeaCache


@hookimpl
def accelframe_register_policies(register: Callable[..., None]) -> None:
    register("fixed-batch", FixedBatch, kind="batch",
             description="fixed chunk length, up to max_streams streams, oldest pending first")
    register("slo-batch", SLOBatch, kind="batch",
             description="StreamDiffusionV2: chunk length and batch size from an online-fitted latency model L(T, B)")
    register("rolling-kv", RollingKV, kind="batch",
             description="StreamDiffusionV2: rolling KV window with sinks, adaptive sink refresh, RoPE reset")
    register("motion-noise", MotionNoise, kind="batch",
             description="StreamDiffusionV2: motion-aware noise level for video-to-video chunks (EMA)")
    register("scope", make_scope, kind="step",
             description="SCOPE: cache / predict (Taylor along sigma) / recompute, selective computation; "
                         "presets 'skyreels-v2', 'magi-1'")
    register("teacache", TeaCache, kind="step",
             description="TeaCache: cache while the polynomial-rescaled change of the modulated input stays small")
    register("taylorseer", TaylorSeer, kind="step",
             description="TaylorSeer: compute every N steps, forecast between (Taylor in step index)")
    register("first-block-cache", FirstBlockCache, kind="step",
             description="reuse-only: cache while the probe is close to the last computed call's")
    register("flowcache", FlowCache, kind="step",
             description="FlowCache: per-chunk accumulated change, warm-up, first and last steps computed")
    register("sdvg", make_sdvg, kind="block",
             description="SDVG: accept a draft iff its worst frame's reward >= tau; block 0 always regenerated")
    register("random-routing", RandomRouting, kind="block",
             description="accept drafted blocks at random with a given rate (SDVG's ablation baseline)")


@hookimpl
def accelframe_register_commands(register: Callable[..., None]) -> None:
    from accelframe_policies import bench_block, bench_step, bench_stream, calibrate, stream_cli

    register("step", bench_step.configure, bench_step.run, group="bench",
             help="step policies against the original on the tiny world (SCOPE's Table 1 and 2 protocol)")
    register("block", bench_block.configure, bench_block.run, group="bench",
             help="SDVG against the target and the drafter on the tiny world (the paper's Table 1 and 2 protocol)")
    register("stream", bench_stream.configure, bench_stream.run, group="bench",
             help="StreamDiffusionV2 on the tiny world: first frame, fps, jitter, deadline misses against load, "
                  "streams and ranks")
    register("stream", stream_cli.configure, stream_cli.run,
             help="run live streams (a world clip, a video file or text) through StreamDiffusionV2 and write mp4s")
    register("calibrate", calibrate.configure, calibrate.run,
             help="fit TeaCache's rescale polynomial for an adapter from recorded full runs")
