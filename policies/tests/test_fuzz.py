"""Fuzzing the public API (issue 20, item 10): ``Pipeline(...)``, ``pipe.use(name, **kw)`` for every
registered policy, and ``pipe.generate(...)`` with values drawn from what a user could pass (the
defaults, nearby numbers, NaN and infinities, huge ints, strings, None, lists, dicts, tensors and
misspelt keywords). Every outcome is a finished run whose latents are finite and shaped as asked, or
an error from ``accelframe.errors``; nothing else (TypeError, IndexError, RuntimeError, ...).

The built-in policies are registered through their plugin module (autoloading is off in tests);
the analytic adapter keeps every run to milliseconds, and configurations that would make a large
video are dropped before they run (request size limits are tested elsewhere)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from accelframe import knobs as kn
from accelframe.errors import AccelframeError
from accelframe.pipeline import Pipeline
from accelframe.testing.analytic import AnalyticConfig
from accelframe.testing.fixtures import make_hooks
from accelframe_policies import plugin as policies_plugin

pytestmark = pytest.mark.usefixtures("one_thread")

FUZZ = settings(max_examples=600, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

POLICIES = make_hooks(policies_plugin).registry().names("policy")


def _scorer(frames: torch.Tensor, prompts: Any) -> torch.Tensor:
    return frames.mean(dim=tuple(range(2, frames.dim())))  # one score per frame


# values a user might pass for any keyword
ODD = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 12), st.sampled_from([2**31, 2**63, 10**20, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "yes", "no", "auto", "block", "taylor2", "both", "identity", "skyreels-v2", "magi-1"]),
    st.lists(st.integers(-1, 5), max_size=3), st.just({"a": 1}), st.just(torch.zeros(2)),
    st.just(float("nan")), st.just(_scorer),
)


def _near(default: Any) -> st.SearchStrategy[Any]:
    """The default or numbers near it."""
    options: list[st.SearchStrategy[Any]] = [st.just(default)]
    if isinstance(default, bool):
        options.append(st.booleans())
    elif isinstance(default, int):
        options.append(st.integers(default - 2, default + 3))
    elif isinstance(default, float) and math.isfinite(default):
        options.append(st.floats(default - 1.0, default * 3 + 1.0))
    return st.one_of(*options)


def _value(data: st.DataObject, good: st.SearchStrategy[Any], label: str) -> Any:
    """Mostly a plausible value, one time in four an odd one."""
    return data.draw(ODD if data.draw(st.integers(0, 5), label=f"{label} odd?") == 5 else good, label=label)


def _kwargs(factory: Any, data: st.DataObject, label: str, max_keys: int = 3) -> dict[str, Any]:
    found = kn.knobs(factory) or []
    by_name = {k.name: k for k in found}
    names = data.draw(st.lists(st.sampled_from(list(by_name)), max_size=max_keys, unique=True)
                      if by_name else st.just([]), label=f"{label} keys")
    if data.draw(st.integers(0, 9), label=f"{label} misspelt?") == 9:
        names.append(data.draw(st.sampled_from(["nope", "name", "tauc", "Steps"]), label=f"{label} misspelt"))
    out = {}
    for n in names:
        k = by_name.get(n)
        default = None if k is None or k.required else k.default
        out[n] = _value(data, _near(default), f"{label}.{n}")
    return out


def _small(adapter_kwargs: dict[str, Any]) -> bool:
    """A configuration the analytic adapter runs in milliseconds."""
    cfg = {**{k.name: k.default for k in kn.knobs(AnalyticConfig)}, **adapter_kwargs}
    try:
        size = int(cfg["channels"]) * int(cfg["height"]) * int(cfg["width"])
        return size <= 512 and int(cfg["steps"]) <= 12 and float(cfg["cost_ms"]) == 0.0
    except (TypeError, ValueError, OverflowError):
        return True  # refused by the config anyway


@FUZZ
@given(data=st.data())
def test_every_outcome_is_a_run_or_a_typed_error(data):
    adapter_kwargs = _kwargs(AnalyticConfig, data, "adapter", max_keys=2)
    assume(_small(adapter_kwargs))
    drafter = data.draw(st.booleans(), label="drafter")
    strict = _value(data, st.booleans(), "strict")
    policies = data.draw(st.lists(st.sampled_from(POLICIES), max_size=2), label="policies")
    prompts = _value(data, st.one_of(st.just("a red circle moves left"),
                                     st.lists(st.text(max_size=6), min_size=1, max_size=2)), "prompts")
    request = {"num_frames": _value(data, st.sampled_from([3, 6, 9]), "num_frames")}
    plausible = {"seed": st.integers(0, 2**63 - 1), "start_sigma": st.floats(0.05, 1.0),
                 "decode": st.booleans(), "first_frame": st.just(0), "nope": ODD}
    for field, good in plausible.items():
        if data.draw(st.integers(0, 3), label=f"give {field}?") == 3:
            request[field] = _value(data, good, field)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # policy fallbacks warn; the outcome is what is checked
        try:
            pipe = Pipeline("analytic", hooks=make_hooks(policies_plugin), adapter_kwargs=adapter_kwargs,
                            drafter="analytic" if drafter else None, strict=strict)
            for name in policies:
                entry = pipe.registry.get("policy", name)
                pipe.use(name, **_kwargs(entry.factory, data, name))
            result = pipe.generate(prompts, **request)
        except AccelframeError as exc:
            event(f"refused: {type(exc).__name__}")
            return
        except Exception as exc:  # noqa: BLE001 - the assertion names what escaped
            pytest.fail(f"{type(exc).__name__} escaped instead of an accelframe error: {exc!r}")
    event(f"ran with {len(pipe.policies)} policies")
    req = pipe.request(prompts, **request)
    assert result.latents.shape[:2] == (req.batch, req.num_frames)
    assert bool(torch.isfinite(result.latents).all())
