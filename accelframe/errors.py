"""The typed errors accelframe raises. Users catch these; every message names what was wrong.

All errors derive from :class:`AccelframeError`. Configuration errors name the field, the value
and what is allowed, and are raised before any model call.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence


def close_matches(word: Any, options: Sequence[Any], n: int = 1) -> list[str]:
    """The string ``options`` closest to ``word``, best first (difflib, cutoff 0.6): the one rule
    behind every "did you mean" (a choice, a keyword, a registered name)."""
    words = [o for o in options if isinstance(o, str)]
    return difflib.get_close_matches(str(word), words, n=n, cutoff=0.6) if words else []


def closest_first(word: Any, options: Iterable[str]) -> list[str]:
    """``options`` with the ones closest to ``word`` first (:func:`close_matches`), the rest in
    their order."""
    options = list(dict.fromkeys(options))
    close = close_matches(word, options, n=max(len(options), 1))
    return close + [o for o in options if o not in close]


def did_you_mean(word: Any, options: Sequence[str], label: str) -> str:
    """How a message lists the valid names for ``word``: ``did you mean 'x'? LABEL (closest
    first): a, b, c`` (without the question when nothing is close)."""
    close = close_matches(word, options)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}{label} (closest first): " + ", ".join(closest_first(word, options))


class AccelframeError(Exception):
    """Base class of every error accelframe raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # the subclasses' __init__ take their fields, not the message: rebuild from both, so that
        # an error raised in a worker process comes back as itself
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[AccelframeError], args: tuple[Any, ...], state: dict[str, Any]) -> AccelframeError:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class ConfigError(AccelframeError, ValueError):
    """A config, context or request field holds a value outside what is allowed."""

    def __init__(self, owner: str, field: str, value: Any, allowed: str) -> None:
        self.owner, self.field, self.value, self.allowed = owner, field, value, allowed
        super().__init__(f"{owner}.{field} = {value!r} is not allowed: {allowed}")


class LimitError(ConfigError):
    """A request or stream larger than an adapter's declared limits (frames, batch, frame size) or
    than the memory it would need. ``limit`` names the limit (``max_frames``, ``max_batch``,
    ``max_height``, ``max_width``, ``memory``, ``max_upscaled_side``); ``maximum`` is the largest
    value of ``field`` allowed, when one can be given."""

    def __init__(self, owner: str, field: str, value: Any, allowed: str, *, limit: str,
                 maximum: int | None = None) -> None:
        self.limit, self.maximum = limit, maximum
        super().__init__(owner, field, value, allowed)


class UnknownNameError(AccelframeError, KeyError):
    """A policy, adapter, scorer or command name that no loaded plugin registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        plural = "policies" if kind == "policy" else f"{kind}s"
        if not self.known:
            super().__init__(f"unknown {kind} {name!r}; registered {plural}: none (is plugin autoloading "
                             "disabled?)")
            return
        super().__init__(f"unknown {kind} {name!r}; " + did_you_mean(name, self.known, f"registered {plural}"))

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class DuplicateNameError(AccelframeError):
    """Two plugins registered the same name for the same kind of thing."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(
            f"{kind} {name!r} is registered twice: by plugin {first!r} and by plugin {second!r}"
        )


class IncompatibleError(AccelframeError):
    """An adapter, drafter and policy stack that cannot work together; the message says why."""


class PluginError(AccelframeError):
    """A plugin that does not fit the hook specifications (unknown hook, wrong signature)."""


class PolicyError(AccelframeError):
    """A policy raised or answered nonsense while ``strict=True`` (otherwise the exact path answers)."""

    def __init__(self, hook: str, plugin: str, problem: str) -> None:
        self.hook, self.plugin, self.problem = hook, plugin, problem
        super().__init__(f"plugin {plugin!r} failed in {hook}: {problem}")


class PipelineBusyError(AccelframeError, RuntimeError):
    """A pipeline asked to generate, stream or change its stack while it runs in another thread."""


class PolicyFallbackWarning(UserWarning):
    """A policy failed; the exact path answered that decision instead."""


class PluginLoadWarning(UserWarning):
    """A plugin's entry point failed to import; the other plugins are still loaded."""


class CheckpointError(AccelframeError):
    """A checkpoint that does not fit the network: missing, unexpected or misshaped keys, an
    unreadable file, or weights of another family or size. The message lists what is wrong."""

    def __init__(self, path: str, problem: str, *, missing: list[str] = (), unexpected: list[str] = (),
                 misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = ()) -> None:
        self.path, self.problem = path, problem
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        lines = [f"checkpoint {path}: {problem}"]
        for title, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        if self.misshaped:
            shown = "; ".join(f"{k}: file {tuple(f)} vs model {tuple(m)}" for k, f, m in self.misshaped[:12])
            lines.append(f"  {len(self.misshaped)} misshaped keys: {shown}")
        super().__init__("\n".join(lines))
