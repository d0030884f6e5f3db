"""The policy contract beyond the hooks: what a pipeline reads from a policy object, in one place.

A policy is any object whose methods implement accelframe hooks (``accelframe/hookspecs.py``).
Besides its hooks it may declare the members of :class:`Policy`, every one optional. The pipeline
and the plugin manager's facade read them only through the functions below, never with a bare
``getattr``, so that what a policy may declare is written down once and checked once: a member
of the wrong type is a :class:`~accelframe.errors.ConfigError` naming the policy and the member,
raised when the policy is added to a pipeline, before any model call.

Per-generation state has one home: ``reset()``, which the pipeline calls before every
``generate`` and every streaming run. The lifecycle hooks (``accelframe_generation_start`` /
``_end``) are for observing a generation (timing, logging, per-generation set-up keyed by
``info.generation``), not for resetting a policy.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Callable, Protocol

from accelframe.errors import ConfigError
from accelframe.types import AppliesTo

if TYPE_CHECKING:
    from accelframe.registry import Registry
    from accelframe.types import Request

# ``pipeline`` arguments below are an accelframe.pipeline.Pipeline: typed Any, since the pipeline
# module imports this one

# the level each policy hook belongs to: a policy implements the hooks of one level
KIND_BY_HOOK = {
    "accelframe_step_decide": "step",
    "accelframe_step_observe": "step",
    "accelframe_block_early_verdict": "block",
    "accelframe_block_verdict": "block",
    "accelframe_block_observe": "block",
    "accelframe_batch_plan": "batch",
    "accelframe_kv_manage": "batch",
    "accelframe_noise_level": "batch",
    "accelframe_batch_admit": "batch",
    "accelframe_batch_observe": "batch",
}


class Policy(Protocol):
    """The optional members of a policy object, besides its hook implementations.

    Written as a protocol for readers and type checkers; a policy implements any subset of it
    (none at all is fine), so no code checks ``isinstance(obj, Policy)``.
    """

    name: str
    """The policy's name in a stack and in traces when it is added as an object
    (``pipe.use(MyPolicy())``); without one the class name is used. A policy added by its
    registered name keeps that name. A second policy of the same name in one stack becomes
    ``name#2``."""

    applies_to: AppliesTo
    """Step policies: the model(s) it decides for, ``AppliesTo.TARGET``, ``DRAFTER`` or ``BOTH``
    (a value ``AppliesTo`` converts, such as ``"target"``; ``BOTH`` when absent). The facade does
    not ask a step policy about calls of a model it does not apply to."""

    requires: Collection[str]
    """Capability names the adapter(s) it applies to must declare (``accelframe.adapter``:
    ``kv_cache``, ``update_mask``, ``block_units``, ``snapshot``, ``decode``, ``encode``,
    ``kv_window``); a set, frozenset, tuple or list of them, or a property computing one from the
    policy's settings (SCOPE needs ``update_mask`` only when ``selective``). Checked when the
    policy is added: a missing capability is an IncompatibleError."""

    made_for: str | None
    """The adapter a preset of this policy was made for (SCOPE's ``preset``); an IncompatibleError
    about a missing capability suggests it. None: made for no adapter in particular."""

    def bind(self, *, registry: Registry, pipeline: Any = None) -> None:
        """Called once, when the policy is added to a pipeline: look up registered names (a
        scorer) here, so an unknown name fails before any model call."""

    def check_request(self, request: Request) -> None:
        """Called for every request the pipeline validates: raise a typed error for a request the
        policy cannot serve (SDVG refuses ``decode=False``)."""

    def reset(self) -> None:
        """Drop per-generation state. Called before every ``generate`` and before every streaming
        run (whose streams are generations of their own: key state on ``ctx.generation`` when it
        must not be shared between them). The one place to reset; the lifecycle hooks observe."""


METHODS = ("bind", "check_request", "reset")

_MISSING = object()


def _owner(obj: Any, name: str | None) -> str:
    return name if name is not None else type(obj).__name__


def kind_of(obj: Any) -> str:
    """The level of the hooks ``obj`` implements: ``"step"``, ``"block"``, ``"batch"``, or
    ``"mixed"``; a ConfigError when it implements none."""
    kinds = {k for hook, k in KIND_BY_HOOK.items() if callable(getattr(obj, hook, None))}
    if len(kinds) == 1:
        return kinds.pop()
    if not kinds:
        raise ConfigError("Pipeline.use", "policy", obj,
                          "a registered policy name or an object implementing accelframe hooks")
    return "mixed"


def policy_name(obj: Any) -> str:
    """The name a policy added as an object goes by: its ``name``, else its class name."""
    declared = getattr(obj, "name", None)
    if declared is None or declared == "":
        return type(obj).__name__
    if not isinstance(declared, str):
        raise ConfigError(type(obj).__name__, "name", declared,
                          "a str (the policy's name in stacks and traces), or no name attribute")
    return declared


def applies_to(obj: Any, name: str | None = None) -> AppliesTo:
    """The model(s) a step policy decides for (``BOTH`` when it does not say)."""
    declared = getattr(obj, "applies_to", AppliesTo.BOTH)
    if isinstance(declared, AppliesTo):
        return declared
    try:
        return AppliesTo(declared)
    except ConfigError as exc:
        raise ConfigError(_owner(obj, name), "applies_to", declared, exc.allowed) from None


def requirements(obj: Any, name: str | None = None) -> frozenset[str]:
    """The capability names a policy requires (empty when it does not say); an unknown name is a
    ConfigError listing the known ones."""
    from accelframe.adapter import CAPABILITIES  # the adapter contract imports torch: not at start-up

    declared = getattr(obj, "requires", None)
    if not declared:
        return frozenset()
    allowed = "a set of capability names among " + ", ".join(sorted(CAPABILITIES))
    # a str is iterable too: "decode" would read as the capabilities 'd', 'e', 'c', ...
    if isinstance(declared, (str, bytes)) or not isinstance(declared, Collection):
        raise ConfigError(_owner(obj, name), "requires", declared, allowed)
    needed = frozenset(declared)
    if not all(isinstance(c, str) for c in needed):
        raise ConfigError(_owner(obj, name), "requires", declared, allowed)
    unknown = needed - CAPABILITIES
    if unknown:
        raise ConfigError(_owner(obj, name), "requires", sorted(unknown),
                          "capabilities among " + ", ".join(sorted(CAPABILITIES)))
    return needed


def made_for(obj: Any, name: str | None = None) -> str | None:
    """The adapter a preset of the policy was made for, or None."""
    declared = getattr(obj, "made_for", None)
    if declared is not None and not isinstance(declared, str):
        raise ConfigError(_owner(obj, name), "made_for", declared, "an adapter name (str), or None")
    return declared


def _method(obj: Any, member: str, name: str | None) -> Callable[..., Any] | None:
    found = getattr(obj, member, _MISSING)
    if found is _MISSING or found is None:
        return None
    if not callable(found):
        sig = {"bind": "bind(*, registry, pipeline=None)", "check_request": "check_request(request)",
               "reset": "reset()"}[member]
        raise ConfigError(_owner(obj, name), member, found, f"a method {sig}, or no such attribute")
    return found


def bind(obj: Any, name: str | None = None, *, registry: Registry, pipeline: Any = None) -> None:
    """Call the policy's ``bind`` (when it has one)."""
    method = _method(obj, "bind", name)
    if method is not None:
        method(registry=registry, pipeline=pipeline)


def check_request(obj: Any, request: Request, name: str | None = None) -> None:
    """Call the policy's ``check_request`` (when it has one); it raises for a request it refuses."""
    method = _method(obj, "check_request", name)
    if method is not None:
        method(request)


def reset(obj: Any, name: str | None = None) -> None:
    """Call the policy's ``reset`` (when it has one)."""
    method = _method(obj, "reset", name)
    if method is not None:
        method()


def check(obj: Any, name: str | None = None) -> None:
    """Check every member the policy declares (types only; nothing is called): what
    :meth:`Pipeline.use <accelframe.pipeline.Pipeline.use>` runs before it takes a policy."""
    if name is None:
        policy_name(obj)
    applies_to(obj, name)
    requirements(obj, name)
    made_for(obj, name)
    for member in METHODS:
        _method(obj, member, name)
