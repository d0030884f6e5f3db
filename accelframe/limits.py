"""Request size: check requests and streams against the adapters' declared limits and the memory
they would need, before anything is allocated.

Each adapter declares :class:`~accelframe.adapter.Limits` (or gets a default from its shapes).
:func:`check_request` is called by :meth:`Pipeline.request <accelframe.pipeline.Pipeline.request>`
for every generation; :func:`check_streams` by the stream loop for its sources. Both raise a
:class:`~accelframe.errors.LimitError` that names the limit, the value and the largest value allowed.

The memory budget is what the machine has available now (``MemAvailable``, within a cgroup's limit;
the device's free memory for an adapter on a GPU), or ``ACCELFRAME_MAX_MEMORY_GB`` when set.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import torch

from accelframe.adapter import Limits, adapter_device, limits_of, pixel_frames, pixel_size
from accelframe.errors import ConfigError, LimitError
from accelframe.types import Request

ENV = "ACCELFRAME_MAX_MEMORY_GB"

# what a stream keeps per emitted pixel frame while it runs, whatever it emits: its arrival and
# emission times (a float and two list slots)
STREAM_RECORD_BYTES = 40


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def host_available() -> int | None:
    """Bytes of host memory available to this process now, or None when it cannot be read."""
    found = _meminfo("MemAvailable")
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = None
    room = _cgroup_room()
    if room is not None:
        found = room if found is None else min(found, room)
    return found


def memory_budget(device: Any = None) -> tuple[int | None, str]:
    """(bytes a request may use, where that number comes from). ``ACCELFRAME_MAX_MEMORY_GB`` (GiB)
    wins; else the free memory of a CUDA ``device``, else the host's available memory. None when it
    cannot be known (nothing is refused on memory then)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = math.nan
        if not (gb > 0 and math.isfinite(gb)):
            raise ConfigError("environment", ENV, raw, "a positive number of GiB (the memory a request "
                                                       "may use), or unset to use the available memory")
        return int(gb * 2**30), f"{ENV}={raw}"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free), f"free memory of {dev}"
    return host_available(), "available memory of this machine"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """The largest n in [0, hi] with ``fits(n)`` (``fits`` is monotone: true up to some n)."""
    lo = 0
    if not fits(0):
        return -1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _hint(where: str) -> str:
    return where if where.startswith(ENV) else f"{where}; set {ENV} to change it"


# the largest upscaled frame side: what H.264 encoders and players handle (8K); an upscale is for
# showing tiny frames, not for making giant ones
MAX_UPSCALED_SIDE = 8192
# bytes an upscaled pixel costs while a video is written: the float frames upscaled, a padded copy,
# the clamped and scaled copy of to_uint8 (3 x float32 per colour) and its uint8 result
UPSCALE_PIXEL_BYTES = 3 * (3 * 4 + 1)


def check_upscale(owner: str, field: str, factor: Any, size: Sequence[int], *, frames: int = 1,
                  device: Any = None) -> None:
    """Refuse, before anything is allocated, an upscaling ``factor`` of ``frames`` frames of
    ``size`` (height, width) whose upscaled side exceeds :data:`MAX_UPSCALED_SIDE` or whose frames
    would not fit the memory budget; a :class:`LimitError` naming ``field`` and the largest factor
    allowed. Used by ``accelframe generate --upscale``, :func:`accelframe.media.write_video`,
    :class:`~accelframe.streaming.sinks.Mp4Sink` and ``accelframe stream --upscale``."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ConfigError(owner, field, factor, "an int >= 1")
    h, w = (int(v) for v in size)
    side = max(h, w, 1)
    most = max(MAX_UPSCALED_SIDE // side, 1)
    if factor > most:
        raise LimitError(owner, field, factor,
                         f"at most {most}: frames of {h}x{w} pixels upscaled {factor}x would be "
                         f"{h * factor}x{w * factor}, and an upscaled side may be at most {MAX_UPSCALED_SIDE} "
                         "pixels", limit="max_upscaled_side", maximum=most)
    if factor == 1:  # nothing is upscaled: the frames are written as they are
        return
    budget, where = memory_budget(device)
    if budget is None:
        return

    def need(f: int) -> int:
        return max(frames, 1) * h * f * w * f * UPSCALE_PIXEL_BYTES

    if need(factor) <= budget:
        return
    most = max(_largest(lambda f: need(f) <= budget, factor), 1)
    raise LimitError(owner, field, factor,
                     f"at most {most}: {frames} frames of {h}x{w} pixels upscaled {factor}x need an "
                     f"estimated {human(need(factor))} of memory while written and the memory budget is "
                     f"{human(budget)} ({_hint(where)})", limit="memory", maximum=most)


def check_fixed(name: str, adapter: Any, request: Request, lim: Limits | None = None) -> None:
    """The declared bounds of one adapter (frame positions, batch, frame size) for ``request``."""
    lim = lim or limits_of(adapter)
    who = f"adapter {name!r}"
    if lim.max_batch is not None and request.batch > lim.max_batch:
        raise LimitError("Request", "prompts", request.batch,
                         f"at most {lim.max_batch} prompts per request ({who} limit max_batch)",
                         limit="max_batch", maximum=lim.max_batch)
    h, w = pixel_size(adapter)
    for field, value, most in (("height", h, lim.max_height), ("width", w, lim.max_width)):
        if most is not None and value > most:
            raise LimitError(who, field, value, f"frames of at most {most} pixels ({who} limit max_{field})",
                             limit=f"max_{field}", maximum=most)
    if lim.max_frames is not None:
        end = request.first_frame + request.num_frames - request.rope_offset
        if end > lim.max_frames:
            room = max(lim.max_frames - request.first_frame + request.rope_offset, 0)
            raise LimitError("Request", "num_frames", request.num_frames,
                             f"at most {room} latent frames from frame {request.first_frame} (rope offset "
                             f"{request.rope_offset}): {who} addresses {lim.max_frames} frame positions "
                             "(limit max_frames)", limit="max_frames", maximum=room)


def check_request(models: Sequence[tuple[str, Any]], request: Request, *, memory: bool = True) -> None:
    """Refuse ``request`` for the adapters ``models`` ((name, adapter) pairs: a target and its drafter)
    beyond their declared limits or, with ``memory``, beyond the memory budget."""
    limits = [(name, ad, limits_of(ad)) for name, ad in models]
    for name, ad, lim in limits:
        check_fixed(name, ad, request, lim)
    if not memory or not limits:
        return
    budget, where = memory_budget(adapter_device(models[0][1]))
    if budget is None:
        return

    def need(frames: int, batch: int = request.batch) -> int:
        return sum(lim.request_bytes(batch=batch, frames=frames, pixel_frames=pixel_frames(ad, frames)
                                     if request.decode else 0,
                                     context_frames=request.first_frame + frames)
                   for _, ad, lim in limits)

    total = need(request.num_frames)
    if total <= budget:
        return
    most = _largest(lambda n: need(n) <= budget, request.num_frames)
    rows = "1 prompt" if request.batch == 1 else f"{request.batch} prompts"
    if most < 1:
        raise LimitError("Request", "prompts", request.batch,
                         f"fewer prompts: even one frame needs an estimated {human(need(1))} with {rows} and "
                         f"the memory budget is {human(budget)} ({_hint(where)})", limit="memory", maximum=0)
    names = " and ".join(repr(n) for n, _, _ in limits)
    raise LimitError("Request", "num_frames", request.num_frames,
                     f"at most {most} latent frames with {rows} on adapter {names}: this request needs an "
                     f"estimated {human(total)} of memory (latents, KV cache, decoded frames) and the memory "
                     f"budget is {human(budget)} ({_hint(where)})", limit="memory", maximum=most)


def check_streams(sources: Sequence[Any], name: str, adapter: Any, fmap: Any, *, keep_frames: bool,
                  kv_managed: bool) -> None:
    """Refuse streams that cannot fit: a stream longer than the adapter's frame positions (unless a
    KV policy manages the cache and its positions), or streams whose memory together exceeds the
    budget. A stream keeps its timing record per pixel frame, its frames when ``keep_frames``, and
    its KV cache (bounded by a window, or by a KV policy when ``kv_managed``)."""
    lim = limits_of(adapter)
    for s in sources:
        if s.frames is not None:  # input frames of another size are refused by the stream loop
            check_fixed(name, adapter, Request(prompts=(s.prompt,), num_frames=1, seed=s.seed), lim)
        if lim.max_frames is not None and not kv_managed:
            latents = fmap.latents_total(s.total)
            if latents > lim.max_frames:
                field = "num_frames" if s.frames is None else "frames"
                most = _largest(lambda p: fmap.latents_total(p) <= lim.max_frames, s.total)
                raise LimitError(f"StreamSource {s.id!r}", field, s.total,
                                 f"at most {most} pixel frames: adapter {name!r} addresses {lim.max_frames} "
                                 "latent frame positions (limit max_frames) and no KV policy (such as "
                                 "rolling-kv) resets them", limit="max_frames", maximum=most)
    budget, where = memory_budget(adapter_device(adapter))
    if budget is None:
        return
    pixel_bytes = lim.pixel_frame_bytes if keep_frames else 0
    kv_counted = (not kv_managed or lim.kv_frames is not None) and lim.kv_frame_bytes > 0
    what = ", ".join(["timing record"] + (["kept frames"] if keep_frames else [])
                     + (["KV cache"] if kv_counted else []))

    def need(pixels: int) -> int:
        kv = 0
        if kv_counted:
            kv = lim.request_bytes(batch=1, frames=0, pixel_frames=0, context_frames=fmap.latents_total(pixels))
        return pixels * (STREAM_RECORD_BYTES + pixel_bytes) + kv

    used = 0
    for s in sources:
        mine = need(s.total)
        if used + mine > budget:
            room = budget - used
            most = _largest(lambda p: need(p) <= room, s.total)
            field = "num_frames" if s.frames is None else "frames"
            beside = f" beside the {human(used)} of the streams before it" if used else ""
            raise LimitError(f"StreamSource {s.id!r}", field, s.total,
                             f"at most {max(most, 0)} pixel frames{beside}: this stream needs an estimated "
                             f"{human(mine)} of memory ({what}) and the memory budget is {human(budget)} ({_hint(where)})",
                             limit="memory", maximum=max(most, 0))
        used += mine


__all__ = ["ENV", "MAX_UPSCALED_SIDE", "STREAM_RECORD_BYTES", "check_fixed", "check_request", "check_streams",
           "check_upscale", "host_available", "memory_budget"]
