"""The reduced-step original: the same loop with fewer denoising steps (SCOPE section 4.8).

Not a hook policy (no step policy can lengthen a solver step): a function that gives the adapter
keyword arguments of the original run with ``steps`` steps, so a benchmark can build it beside
the accelerated runs. Diffusion forcing keeps its staircase shape by scaling ``ar_step`` with the
step count; a few-step block loop keeps an evenly thinned subset of its step list.
"""

from __future__ import annotations

from typing import Any

from accelframe.errors import ConfigError


def reduced_step_kwargs(adapter: str, steps: int, kwargs: dict[str, Any], *,
                        original_steps: int | None = None) -> dict[str, Any]:
    """``kwargs`` of ``adapter`` changed to run ``steps`` denoising steps per unit."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError("reduced_step_kwargs", "steps", steps, "an int >= 1")
    out = dict(kwargs)
    if adapter == "skyreels-v2-df":
        n = original_steps or int(kwargs.get("num_inference_steps", 30))
        out["num_inference_steps"] = steps
        ar = int(kwargs.get("ar_step", 0))
        if ar:
            out["ar_step"] = max(1, round(ar * steps / n))
        return out
    if adapter in ("self-forcing", "krea-realtime"):
        full = list(kwargs.get("denoising_step_list", (1000, 750, 500, 250)))
        if steps > len(full):
            raise ConfigError("reduced_step_kwargs", "steps", steps, f"at most {len(full)} (the step list)")
        idx = [round(i * (len(full) - 1) / max(steps - 1, 1)) for i in range(steps)] if steps > 1 else [0]
        out["denoising_step_list"] = tuple(full[i] for i in sorted(set(idx)))
        return out
    if adapter == "magi-1":  # stages of num_steps / window_size: a multiple of the window
        window = int(kwargs.get("window_size", 4))
        if steps % window:
            raise ConfigError("reduced_step_kwargs", "steps", steps, f"a multiple of window_size = {window}")
        out["num_steps"] = steps
        return out
    if adapter == "analytic":
        out["steps"] = steps
        return out
    raise ConfigError("reduced_step_kwargs", "adapter", adapter,
                      "one of 'skyreels-v2-df', 'self-forcing', 'krea-realtime', 'magi-1', 'analytic'")


__all__ = ["reduced_step_kwargs"]
