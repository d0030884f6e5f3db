"""Knobs a stream sets for itself: a policy's thresholds changed live for one stream of a loop (a
server's session), the other streams keeping theirs.

A pipeline has one object per policy, shared by every stream it runs, so changing a knob on the
object would change every stream's decisions. A policy that derives from :class:`StreamKnobs`
names in ``live_knobs`` the knobs that are safe to change while a stream runs (a threshold read
afresh at every decision, not a setting its state was built for) and reads them through
:meth:`StreamKnobs.knob` with the decision's generation; a stream's overrides are keyed by its
generation number, which every hook context carries. ``StreamLoop.set_knobs(stream, policy,
**knobs)`` sets them; they are dropped when the stream leaves.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import attrs

from accelframe.errors import ConfigError

# policy object -> generation -> knob -> value (weak: a policy that is gone takes its overrides along)
_OVERRIDES: weakref.WeakKeyDictionary[Any, dict[int, dict[str, Any]]] = weakref.WeakKeyDictionary()


class StreamKnobs:
    """Per-stream overrides of a policy's ``live_knobs`` (see the module docstring)."""

    __slots__ = ()
    live_knobs: ClassVar[tuple[str, ...]] = ()

    def knob(self, generation: int, name: str) -> Any:
        """The knob's value for ``generation``: its override, else the policy's own."""
        got = _OVERRIDES.get(self)
        if got is not None:
            mine = got.get(generation)
            if mine is not None and name in mine:
                return mine[name]
        return getattr(self, name)

    def set_stream_knobs(self, generation: int, **knobs: Any) -> dict[str, Any]:
        """Set knobs for one generation, each checked (converted and validated) as the policy's own
        field would be; a ConfigError names the first that is not a live knob or not allowed.
        Nothing is set unless every one passes. Returns the values set."""
        owner = f"policy {getattr(self, 'name', type(self).__name__)!r}"
        fields = attrs.fields_dict(type(self)) if attrs.has(type(self)) else {}
        checked = {}
        for name, value in knobs.items():
            if name not in self.live_knobs:
                raise ConfigError(owner, "knob", name, "one of its live knobs: " + (", ".join(self.live_knobs) or
                                                                                  "none"))
            field = fields.get(name)
            if field is not None and field.converter is not None:
                value = field.converter(value)
            if field is not None and field.validator is not None:
                field.validator(self, field, value)
            checked[name] = value
        self.check_stream_knobs({**{k: self.knob(generation, k) for k in self.live_knobs}, **checked})
        _OVERRIDES.setdefault(self, {}).setdefault(generation, {}).update(checked)
        return checked

    def check_stream_knobs(self, values: dict[str, Any]) -> None:
        """Raise a ConfigError when the live knobs' values for one stream, taken together, are not
        allowed (a rule across knobs, as ``__attrs_post_init__`` checks for the policy's own)."""

    def clear_stream_knobs(self, generation: int) -> None:
        """Forget a generation's overrides (its stream left)."""
        got = _OVERRIDES.get(self)
        if got is not None:
            got.pop(generation, None)


__all__ = ["StreamKnobs"]
