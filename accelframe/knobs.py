"""The keyword arguments ("knobs") a registered factory takes, with defaults and allowed values.

One place answers "which keywords does this adapter / policy / scorer take?" for two users:
:func:`accelframe.pipeline.call_factory`, which refuses an unknown keyword before building
anything and lists the valid ones, closest match first, and ``accelframe plugins NAME``, which
prints them.

The knobs of a factory come from, in order:

1. ``factory.accelframe_knobs``: a sequence (or a callable returning one) of attrs classes and
   callables whose keyword arguments the factory takes (an adapter that splits its keywords
   between two config classes declares both; a lazily imported class is returned by a callable);
2. an attrs class: its ``__init__`` fields;
3. the signature; a ``**kwargs`` factory whose return annotation is an attrs class
   (``def make_scope(preset=None, **kwargs) -> Scope``) takes that class's fields too.

What a knob allows comes from its validator's (or converter's) ``allowed`` text, as
:mod:`accelframe.validators` sets it; a field checked elsewhere (in ``__attrs_post_init__``)
declares it as ``attrs.field(metadata={"allowed": "..."})``, and a plain parameter of a factory
function as ``factory.accelframe_allowed = {"name": "..."}``.

A ``**kwargs`` factory that none of these explains has unknown knobs (``None``): its keywords are
checked only when it is called.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
import typing
from typing import Any, Sequence

import attrs

from accelframe.errors import did_you_mean

REQUIRED = "(required)"


@attrs.frozen(kw_only=True)
class Knob:
    """One keyword argument: its name, default (``REQUIRED`` when there is none), type as
    written, and what is allowed (from its validator; empty when nothing says)."""

    name: str
    default: Any = REQUIRED
    type: str = ""
    allowed: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def to_dict(self) -> dict[str, Any]:
        default = self.default
        if isinstance(default, enum.Enum):
            default = default.value
        elif isinstance(default, float) and not math.isfinite(default):
            default = repr(default)  # JSON has no inf / nan
        elif not isinstance(default, (str, int, float, bool, type(None), list, dict)):
            default = list(default) if isinstance(default, tuple) else repr(default)
        return {"name": self.name, "default": None if self.required else default,
                "required": self.required, "type": self.type, "allowed": self.allowed}


def unknown_keyword_allowed(key: Any, valid: Sequence[str]) -> str:
    """The ``allowed`` text of a ConfigError for an unknown keyword: the valid ones, closest first."""
    if not valid:
        return "no keyword arguments (this takes none)"
    return did_you_mean(key, valid, "valid keywords")


def describe_validator(validator: Any) -> str:
    """What a validator allows, in words (the ``allowed`` of accelframe's validators, and the
    shapes of attrs' own ``optional``, ``and_``, ``instance_of`` and ``in_``)."""
    if validator is None:
        return ""
    text = getattr(validator, "allowed", None)
    if isinstance(text, str):
        return text
    inner = getattr(validator, "validator", None)  # attrs.validators.optional
    if inner is not None and type(validator).__name__ == "_OptionalValidator":
        inner_text = describe_validator(inner)
        return "None or " + inner_text if inner_text else ""
    parts = getattr(validator, "_validators", None)  # attrs.validators.and_
    if isinstance(parts, (list, tuple)):
        return "; ".join(t for t in (describe_validator(p) for p in parts) if t)
    kind = getattr(validator, "type", None)  # attrs.validators.instance_of
    if isinstance(kind, type):
        return f"an instance of {kind.__name__}"
    options = getattr(validator, "options", None)  # attrs.validators.in_
    if options is not None:
        return "one of " + ", ".join(repr(o) for o in options)
    return ""


def _describe_converter(converter: Any) -> str:
    text = getattr(converter, "allowed", None)
    if isinstance(text, str):
        return text
    if isinstance(converter, type) and issubclass(converter, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in converter)
    return ""


@functools.lru_cache(maxsize=256)  # classes do not change: Request checks its keywords per request
def _attrs_knobs(cls: type) -> list[Knob]:
    out = []
    for f in attrs.fields(cls):
        if not f.init:
            continue
        default: Any = REQUIRED
        if isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
            if not f.default.takes_self:
                try:
                    default = f.default.factory()
                except Exception:  # a factory that needs more than nothing: say so plainly
                    default = f"<{getattr(f.default.factory, '__name__', 'factory')}()>"
        elif f.default is not attrs.NOTHING:
            default = f.default
        allowed = (describe_validator(f.validator) or _describe_converter(f.converter)
                   or str(f.metadata.get("allowed", "")))
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        out.append(Knob(name=f.alias or f.name.lstrip("_"), default=default, type=kind or "",
                        allowed=allowed))
    return out


def _return_class(factory: Any) -> type | None:
    """The attrs class a ``**kwargs`` factory's return annotation names, if any."""
    try:
        hint = typing.get_type_hints(factory).get("return")
    except Exception:  # an annotation that does not resolve: nothing to follow
        return None
    return hint if isinstance(hint, type) and attrs.has(hint) else None


def knobs(factory: Any) -> list[Knob] | None:
    """The knobs of ``factory`` (see the module docstring), or None when they cannot be known."""
    resolve = getattr(factory, "resolve", None)  # a lazily imported factory: look at its target
    if callable(resolve) and not isinstance(factory, type):
        factory = resolve()
    declared = getattr(factory, "accelframe_knobs", None)
    if declared is not None:
        if callable(declared) and not isinstance(declared, type):
            declared = declared()
        out: dict[str, Knob] = {}
        for source in declared:
            found = knobs(source)
            if found is None:
                return None
            for k in found:
                out.setdefault(k.name, k)
        return list(out.values())
    if isinstance(factory, type) and attrs.has(factory):
        return list(_attrs_knobs(factory))
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    found_list: list[Knob] = []
    var_kw = False
    declared_allowed = getattr(factory, "accelframe_allowed", None)
    if not isinstance(declared_allowed, dict):
        declared_allowed = {}
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            annotation = p.annotation if p.annotation is not p.empty else ""
            found_list.append(Knob(name=p.name, default=REQUIRED if p.default is p.empty else p.default,
                                   type=annotation if isinstance(annotation, str)
                                   else getattr(annotation, "__name__", repr(annotation)),
                                   allowed=str(declared_allowed.get(p.name, ""))))
    if var_kw:
        target = _return_class(factory)
        if target is None:
            return None
        named = {k.name for k in found_list}
        found_list += [k for k in _attrs_knobs(target) if k.name not in named]
    return found_list


def keywords(factory: Any) -> list[str] | None:
    """The keyword names ``factory`` takes, or None when they cannot be known."""
    found = knobs(factory)
    return None if found is None else [k.name for k in found]


def check_keywords(owner: str, factory: Any, kwargs: dict[str, Any]) -> list[Knob] | None:
    """Refuse, before ``factory`` runs, a keyword it does not take (a ConfigError listing the valid
    ones, closest first) and a required one that is missing; returns its knobs (None: unknown)."""
    from accelframe.errors import ConfigError

    found = knobs(factory)
    if found is None:
        return None
    valid = [k.name for k in found]
    for key, value in kwargs.items():
        if key not in valid:
            raise ConfigError(owner, key, value, unknown_keyword_allowed(key, valid))
    for k in found:
        if k.required and k.name not in kwargs:
            raise ConfigError(owner, k.name, MISSING,
                              "a value: it is required" + (f" ({k.allowed})" if k.allowed else ""))
    return found


def summary(factory: Any) -> str:
    """The first line of the factory's (or its class's) docstring."""
    resolve = getattr(factory, "resolve", None)
    if callable(resolve) and not isinstance(factory, type):
        factory = resolve()
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


__all__ = ["Knob", "MISSING", "REQUIRED", "check_keywords", "describe_validator", "keywords",
           "knobs", "summary", "unknown_keyword_allowed"]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()  # the value a ConfigError shows for a required keyword not given
