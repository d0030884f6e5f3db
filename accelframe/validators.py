"""attrs validators that raise :class:`~accelframe.errors.ConfigError` naming field, value and range.

Policy authors use them on their own config classes so that a bad keyword argument to
``pipe.use(name, **kwargs)`` fails before any model call with a message a user can act on.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from accelframe.errors import ConfigError, close_matches

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

    check.allowed = allowed  # type: ignore[attr-defined]  # accelframe.knobs shows it
    return check


def is_choice(value: Any, choices: Sequence[Any]) -> bool:
    """``value`` is one of ``choices``, compared by type and value: ``1`` is not ``True``, and an
    unhashable value or a tensor (whose ``==`` is elementwise) is simply not a choice."""
    for c in choices:
        if value is c:
            return True
        if type(value) is type(c):
            try:
                if bool(value == c):
                    return True
            except Exception:  # a tensor or an object whose == cannot answer
                continue
    return False


def one_of(*choices: Any) -> Validator:
    """One of a fixed set of values (compared by type and value; see :func:`is_choice`). A
    misspelt string choice is told the closest one."""
    allowed = "one of " + ", ".join(repr(c) for c in choices)

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if not is_choice(value, choices):
            close = close_matches(value, choices) if isinstance(value, str) else []
            _fail(inst, attribute, value, allowed + (f" (did you mean {close[0]!r}?)" if close else ""))

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def instance_of(kind: type | tuple[type, ...], allowed: str) -> Validator:
    """An instance of ``kind``; ``allowed`` says it in words."""

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, kind):
            _fail(inst, attribute, value, allowed)

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def boolean(inst: Any, attribute: Any, value: Any) -> None:
    """True or False (not 0, 1, ``"no"`` or None)."""
    if not isinstance(value, bool):
        _fail(inst, attribute, value, "True or False")


boolean.allowed = "True or False"  # type: ignore[attr-defined]

DEVICE_ALLOWED = "'cpu', or 'cuda' / 'cuda:N' / 'mps' where that device is present"


def check_device(owner: str, field: str, value: Any) -> Any:
    """``value`` as a ``torch.device`` this process can use, else a ConfigError naming the field:
    an unparsable name (``"banana"``), a device type torch was not built for or that is absent,
    or a CUDA index past the devices present (``"cuda:7"`` on a one-GPU machine)."""
    import torch

    if isinstance(value, torch.device):
        dev = value
    elif isinstance(value, str) and value.strip():
        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(owner, field, value, DEVICE_ALLOWED) from None
    else:
        raise ConfigError(owner, field, value, DEVICE_ALLOWED)
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(owner, field, value, DEVICE_ALLOWED + "; this machine has no CUDA device")
        if dev.index is not None and not 0 <= dev.index < count:
            raise ConfigError(owner, field, value,
                              f"{DEVICE_ALLOWED}; CUDA devices here: "
                              + ", ".join(f"'cuda:{i}'" for i in range(count)))
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(owner, field, value, DEVICE_ALLOWED + "; MPS is not available here")
        return dev
    raise ConfigError(owner, field, value, DEVICE_ALLOWED)


def device(inst: Any, attribute: Any, value: Any) -> None:
    """A device name this process can use (see :func:`check_device`)."""
    check_device(type(inst).__name__, attribute.name, value)


device.allowed = DEVICE_ALLOWED  # type: ignore[attr-defined]


def frame_range(inst: Any, attribute: Any, value: Any) -> None:
    """A half-open frame interval ``(start, end)`` with ``0 <= start < end``."""
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        _fail(inst, attribute, value, "a tuple (start, end) of ints with 0 <= start < end")


frame_range.allowed = "a tuple (start, end) of ints with 0 <= start < end"  # type: ignore[attr-defined]
