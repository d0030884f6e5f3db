"""attrs validators that raise :class:`~accelframe.errors.ConfigError` naming field, value and range.

Policy authors use them on their own config classes so that a bad keyword argument to
``pipe.use(name, **kwargs)`` fails before any model call with a message a user can act on.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from accelframe.errors import ConfigError

Validator = Callable[[Any, Any, Any], None]


def _fail(inst: Any, attribute: Any, value: Any, allowed: str) -> None:
    raise ConfigError(type(inst).__name__, attribute.name, value, allowed)


def number_in(
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> Validator:
    """A real (or integer) number in the interval between ``lo`` and ``hi``."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} in {left}{lo}, {hi}{right}"

    def check(inst: Any, attribute: Any, value: Any) -> None:
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok_type or isinstance(value, bool) or value != value:  # NaN is never allowed
            _fail(inst, attribute, value, allowed)
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            _fail(inst, attribute, value, allowed)

    return check


def one_of(*choices: Any) -> Validator:
    """One of a fixed set of values."""
    allowed = "one of " + ", ".join(repr(c) for c in choices)

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if value not in choices:
            _fail(inst, attribute, value, allowed)

    return check


def instance_of(kind: type | tuple[type, ...], allowed: str) -> Validator:
    """An instance of ``kind``; ``allowed`` says it in words."""

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, kind):
            _fail(inst, attribute, value, allowed)

    return check


def frame_range(inst: Any, attribute: Any, value: Any) -> None:
    """A half-open frame interval ``(start, end)`` with ``0 <= start < end``."""
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        _fail(inst, attribute, value, "a tuple (start, end) of ints with 0 <= start < end")
