"""Stack files: a whole pipeline (adapter, drafter, policy stack, stream options) as a TOML file.

    [adapter]
    name = "self-forcing"
    settings = { size = "world" }

    [drafter]                      # optional
    name = "self-forcing"
    context = "own"                # or "emitted"
    settings = { size = "world-drafter" }

    [pipeline]                     # optional
    max_reuse = 4
    decode_worker = true

    [[policies]]                   # in stack order, any number
    name = "sdvg"
    settings = { tau = 0.62 }

    [stream]                       # optional: how `accelframe stream` and `serve` run the stack
    stream_batch = true

:func:`load` reads one into a :class:`StackConfig`, ``Pipeline.from_config`` makes the
:class:`~accelframe.pipeline.Pipeline` of it, ``pipe.to_config()`` gives it back
and :meth:`StackConfig.to_toml` / :func:`write` write it: reading a written file gives the same
config. A file that cannot be used raises :class:`StackFileError` naming the file, the key (with its
line where the file shows it), the value and what is allowed, before any model call: a key or
setting the table or policy does not take lists the valid ones.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs

from accelframe.errors import AccelframeError, ConfigError, UnknownNameError, did_you_mean
from accelframe.types import DRAFTER_CONTEXTS, DRAFTER_CONTEXTS_ALLOWED

FORMAT = 1  # the ``format`` key: what this module reads and writes
TABLES = ("format", "adapter", "drafter", "pipeline", "policies", "stream")
ADAPTER_KEYS = ("name", "settings")
DRAFTER_KEYS = ("name", "context", "settings")
PIPELINE_KEYS = ("max_reuse", "decode_worker", "strict")
POLICY_KEYS = ("name", "settings")
STREAM_KEYS = ("stream_batch", "fps", "deadline_s")
SYNTAX = "(syntax)"  # the key of a file TOML cannot parse


class StackFileError(ConfigError):
    """A stack file that cannot be read or used: ``path``, the dotted ``key`` (``policies[1].settings.tau``),
    its ``line`` when the file shows it (else None), the value and what is allowed."""

    def __init__(self, path: str, key: str, value: Any, allowed: str, *, line: int | None = None) -> None:
        super().__init__(f"stack file {path}", key, value, allowed)
        self.path, self.key, self.line = path, key, line
        where = f"{path}, line {line}" if line is not None else path
        self.args = (f"stack file {where}: not {allowed}: {value}" if key == SYNTAX else
                     f"stack file {where}: {key} = {value!r} is not allowed: {allowed}",)

    def __str__(self) -> str:
        return self.args[0]


# ---- the config --------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as TOML gives it back: tuples become lists, inside lists and tables too."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _settings(value: Any) -> dict[str, Any]:
    return _plain(dict(value or {}))


@attrs.frozen(kw_only=True)
class PolicyEntry:
    """One policy of the stack: its registered name and the keyword arguments it is made with."""

    name: str
    settings: dict[str, Any] = attrs.field(factory=dict, converter=_settings)


@attrs.frozen(kw_only=True)
class StreamOptions:
    """How ``accelframe stream`` and ``accelframe serve`` run a stack: the stream batch (consecutive
    chunks as rows of batched forwards), and the rate and deadline of their streams when the command
    line does not set them (None: the command's own default)."""

    stream_batch: bool = False
    fps: float | None = None
    deadline_s: float | None = None


@attrs.frozen(kw_only=True)
class StackConfig:
    """A pipeline as data: what a stack file holds. Equal configs build equal pipelines."""

    adapter: str
    adapter_settings: dict[str, Any] = attrs.field(factory=dict, converter=_settings)
    drafter: str | None = None
    drafter_settings: dict[str, Any] = attrs.field(factory=dict, converter=_settings)
    drafter_context: str = "own"
    max_reuse: int | None = None
    decode_worker: bool = False
    strict: bool = False
    policies: tuple[PolicyEntry, ...] = attrs.field(default=(), converter=tuple)
    stream: StreamOptions | None = None
    source: str | None = attrs.field(default=None, eq=False)  # the file it was read from, for messages
    text: str | None = attrs.field(default=None, eq=False, repr=False)  # its text: lines in messages

    def error(self, exc: AccelframeError, index: int | None = None) -> StackFileError:
        """The file's error for ``exc``, raised while ``Pipeline.from_config`` builds this config:
        while making the adapter and drafter (``index`` None) or adding ``policies[index]``."""
        where = _Where(self.source or "<config>", self.text)
        if index is None:
            roles = {"adapter": (self.adapter, self.adapter_settings),
                     **({"drafter": (self.drafter, self.drafter_settings)} if self.drafter else {})}
            return _translate(where, exc, roles, "adapter")
        p = self.policies[index]
        return _translate(where, exc, {f"policies[{index}]": (p.name, p.settings)}, f"policies[{index}]",
                          kind="policy")

    def to_dict(self) -> dict[str, Any]:
        """The TOML document as a dict (what :func:`tomllib.loads` gives for :meth:`to_toml`)."""
        doc: dict[str, Any] = {"format": FORMAT, "adapter": {"name": self.adapter}}
        if self.adapter_settings:
            doc["adapter"]["settings"] = dict(self.adapter_settings)
        if self.drafter is not None:
            doc["drafter"] = {"name": self.drafter, "context": self.drafter_context}
            if self.drafter_settings:
                doc["drafter"]["settings"] = dict(self.drafter_settings)
        pipeline = {k: v for k, v in (("max_reuse", self.max_reuse), ("decode_worker", self.decode_worker),
                                      ("strict", self.strict)) if v not in (None, False)}
        if pipeline:
            doc["pipeline"] = pipeline
        if self.policies:
            doc["policies"] = [{"name": p.name, **({"settings": dict(p.settings)} if p.settings else {})}
                               for p in self.policies]
        if self.stream is not None:
            doc["stream"] = {k: v for k, v in attrs.asdict(self.stream).items() if v is not None}
        return doc

    def to_toml(self, comment: str | None = None) -> str:
        """The stack file's text (``comment``: lines written at its top as TOML comments)."""
        return dumps(self.to_dict(), comment=comment)


# ---- reading -----------------------------------------------------------------------------------


@attrs.define
class _Where:
    """Names a key of the file in errors, with its line when the text shows it."""

    path: str
    text: str | None

    def fail(self, key: str, value: Any, allowed: str) -> StackFileError:
        return StackFileError(self.path, key, value, allowed, line=self.line_of(key))

    def line_of(self, key: str) -> int | None:
        """The line of ``key`` (dotted, ``policies[2].settings.tau``): the line that assigns its last
        part inside its table (or inline table), or the table's own header."""
        if self.text is None:
            return None
        lines = self.text.splitlines()
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
        table, index, rest = parts[0], None, parts[1:]
        if rest and rest[0].startswith("["):
            index, rest = int(rest[0][1:-1]), rest[1:]
        start, end = _table_span(lines, table, index)
        if start is None:
            return None
        if not rest:
            return start + 1
        # the deepest part first: `tau = ...` inside `settings = {...}` or [policies.settings]
        for part in reversed(rest):
            pat = re.compile(rf"(^|[{{,\s]){re.escape(part)}\s*=")
            for i in range(start, end):
                if pat.search(lines[i].split("#", 1)[0]):
                    return i + 1
        return start + 1


def _table_span(lines: list[str], table: str, index: int | None) -> tuple[int | None, int]:
    """The lines ``[start, end)`` of ``[table]`` (or the ``index``-th ``[[table]]``) and its
    sub-tables; a top-level ``table = {...}`` line gives that one line."""
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    start, seen = None, -1
    for i, line in enumerate(lines):
        m = header.match(line)
        if m:
            name = m.group(1)
            if start is not None and not (name.startswith(table + ".") and not line.lstrip().startswith("[[")):
                return start, i
            if name == table and start is None:
                seen += 1 if line.lstrip().startswith("[[") else 0
                if index is None or seen == index:
                    start = i
        elif start is None and re.match(rf"^\s*{re.escape(table)}\s*=", line):
            return i, i + 1
    return start, len(lines)


def _translate(where: _Where, exc: AccelframeError, roles: dict[str, tuple[str, dict[str, Any]]],
               fallback: str, *, kind: str = "adapter") -> StackFileError:
    """The file's error for ``exc``, raised while building: an unknown name at its ``name`` key, a
    factory's ConfigError (owner ``"<role> 'name'"``, or a field that is one of the settings) at
    that setting, anything else (an incompatible stack, a refused option) at ``fallback``."""
    if isinstance(exc, StackFileError):
        return exc
    for role, (name, settings) in roles.items():
        if isinstance(exc, UnknownNameError) and exc.name == name:
            return where.fail(f"{role}.name", name, str(exc))
        owner = f"{kind if kind == 'policy' else role} {name!r}"
        if isinstance(exc, ConfigError) and (exc.owner == owner or exc.field in settings):
            return where.fail(f"{role}.settings.{exc.field}", exc.value, exc.allowed)
    return where.fail(fallback, roles[fallback][0] if fallback in roles else None, str(exc))


def _check_keys(where: _Where, table: str, got: Mapping[str, Any], valid: Iterable[str]) -> None:
    valid = list(valid)
    for key in got:
        if key not in valid:
            raise where.fail(f"{table}.{key}" if table else key, got[key], did_you_mean(key, valid, "valid keys"))


def _table(where: _Where, doc: Mapping[str, Any], key: str, required: bool) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise where.fail(key, None, f"a [{key}] table with at least its name")
        return None
    if not isinstance(value, dict):
        raise where.fail(key, value, f"a table ([{key}])")
    return value


def _name(where: _Where, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise where.fail(key, value, "a registered name (a non-empty string)")
    return value


def _settings_of(where: _Where, key: str, table: Mapping[str, Any]) -> dict[str, Any]:
    value = table.get("settings", {})
    if not isinstance(value, dict):
        raise where.fail(f"{key}.settings", value, "a table of keyword arguments (settings = { k = v })")
    return value


def from_dict(doc: Mapping[str, Any], *, path: str = "<config>", text: str | None = None) -> StackConfig:
    """A :class:`StackConfig` from a parsed stack file; ``path`` and ``text`` name it in errors."""
    where = _Where(path, text)
    _check_keys(where, "", doc, TABLES)
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT or isinstance(fmt, bool):
        raise where.fail("format", fmt, f"{FORMAT} (the stack-file format this accelframe reads)")
    adapter = _table(where, doc, "adapter", required=True)
    assert adapter is not None
    _check_keys(where, "adapter", adapter, ADAPTER_KEYS)
    fields: dict[str, Any] = {"adapter": _name(where, "adapter.name", adapter.get("name")),
                              "adapter_settings": _settings_of(where, "adapter", adapter)}
    drafter = _table(where, doc, "drafter", required=False)
    if drafter is not None:
        _check_keys(where, "drafter", drafter, DRAFTER_KEYS)
        context = drafter.get("context", "own")
        if context not in DRAFTER_CONTEXTS:
            raise where.fail("drafter.context", context, DRAFTER_CONTEXTS_ALLOWED)
        fields.update(drafter=_name(where, "drafter.name", drafter.get("name")),
                      drafter_settings=_settings_of(where, "drafter", drafter), drafter_context=context)
    pipeline = _table(where, doc, "pipeline", required=False) or {}
    _check_keys(where, "pipeline", pipeline, PIPELINE_KEYS)
    reuse = pipeline.get("max_reuse")
    if reuse is not None and (not isinstance(reuse, int) or isinstance(reuse, bool) or reuse < 1):
        raise where.fail("pipeline.max_reuse", reuse, "an int >= 1 (non-recompute calls allowed in a row); "
                         "leave it out for no limit")
    fields["max_reuse"] = reuse
    for key in ("decode_worker", "strict"):
        value = pipeline.get(key, False)
        if not isinstance(value, bool):
            raise where.fail(f"pipeline.{key}", value, "true or false")
        fields[key] = value
    policies = doc.get("policies", [])
    if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
        raise where.fail("policies", policies, "an array of tables ([[policies]] with name and settings)")
    entries = []
    for i, p in enumerate(policies):
        _check_keys(where, f"policies[{i}]", p, POLICY_KEYS)
        entries.append(PolicyEntry(name=_name(where, f"policies[{i}].name", p.get("name")),
                                   settings=_settings_of(where, f"policies[{i}]", p)))
    fields["policies"] = entries
    stream = _table(where, doc, "stream", required=False)
    if stream is not None:
        _check_keys(where, "stream", stream, STREAM_KEYS)
        batch = stream.get("stream_batch", False)
        if not isinstance(batch, bool):
            raise where.fail("stream.stream_batch", batch, "true or false")
        rates = {}
        for key in ("fps", "deadline_s"):
            value = stream.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < math.inf):
                raise where.fail(f"stream.{key}", value, "a positive number")
            rates[key] = None if value is None else float(value)
        fields["stream"] = StreamOptions(stream_batch=batch, **rates)
    return StackConfig(**fields, source=path, text=text)


def loads(text: str, *, path: str = "<string>") -> StackConfig:
    """A :class:`StackConfig` from a stack file's text (errors name ``path``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        raise StackFileError(path, SYNTAX, str(exc).split(" (at line")[0], "TOML (https://toml.io)",
                             line=int(m.group(1)) if m else None) from None
    return from_dict(doc, path=path, text=text)


def load(path: str | Path) -> StackConfig:
    """Read the stack file at ``path``: a :class:`StackFileError` names a missing or unreadable
    file, a syntax error (with its line) or a key or value the format does not take."""
    p = Path(path)
    if not p.is_file():
        raise StackFileError(str(path), "(file)", str(path), "an existing stack file (TOML)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StackFileError(str(path), "(file)", str(path), f"a readable UTF-8 text file ({exc})") from None
    return loads(text, path=str(path))


def write(path: str | Path, config: StackConfig, *, force: bool = False, owner: str = "stack file",
          field: str = "path", comment: str | None = None) -> Path:
    """Write ``config`` to ``path`` whole (a temporary renamed into place); an existing file is
    refused unless ``force`` (a ConfigError of ``owner`` naming ``field``)."""
    from accelframe.outputs import atomic_paths, check_output

    target = check_output(str(path), owner=owner, field=field, force=force)
    assert target is not None
    text = config.to_toml(comment=comment)
    with atomic_paths([target]) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return target


# ---- writing TOML ------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{code:04x}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, key) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x, f'{key}.{k}')}" for k, x in v.items()) + " }" \
            if v else "{}"
    if v is None:
        raise ConfigError("stack file", key, None, "a value TOML can hold: it has no null, so leave the key out "
                          "to take its default")
    raise ConfigError("stack file", key, v, "a string, number, boolean, list or table (TOML's values)")


def dumps(doc: Mapping[str, Any], *, comment: str | None = None) -> str:
    """A stack file's dict as TOML: scalars first, then ``[table]`` per table and ``[[name]]`` per
    element of an array of tables; nested tables are written inline."""
    lines = [f"# {c}".rstrip() for c in comment.splitlines()] if comment else []
    scalars = [(k, v) for k, v in doc.items() if not isinstance(v, Mapping)
               and not (isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v))]
    for k, v in scalars:
        lines.append(f"{_key(k)} = {_value(v, k)}")
    for k, v in doc.items():
        if isinstance(v, Mapping):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(kk)} = {_value(vv, f'{k}.{kk}')}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for i, item in enumerate(v):
                lines += ["", f"[[{_key(k)}]]"] + [f"{_key(kk)} = {_value(vv, f'{k}[{i}].{kk}')}"
                                                   for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def of_pipeline(pipe: Any, stream: StreamOptions | None = None) -> StackConfig:
    """The config of a built pipeline (``pipe.to_config()``): its adapter and drafter by registered
    name with the settings they were made with, its options and its stack in order. An adapter or a
    policy given as an object has no name to write: a ConfigError names it."""
    if getattr(pipe, "adapter_spec", None) is None:
        raise ConfigError("Pipeline.to_config", "adapter", pipe.adapter_name,
                          "an adapter given by registered name (an object cannot be written to a stack file)")
    if pipe.drafter is not None and getattr(pipe, "drafter_spec", None) is None:
        raise ConfigError("Pipeline.to_config", "drafter", pipe.drafter_name,
                          "a drafter given by registered name (an object cannot be written to a stack file)")
    entries = []
    for p in pipe.stack:
        if p.settings is None:
            raise ConfigError("Pipeline.to_config", "policy", p.name,
                              "policies added by registered name (pipe.use('name', ...)): an object cannot be "
                              "written to a stack file")
        entries.append(PolicyEntry(name=p.registered, settings=p.settings))
    return StackConfig(adapter=pipe.adapter_spec[0], adapter_settings=pipe.adapter_spec[1],
                       drafter=pipe.drafter_spec[0] if pipe.drafter is not None else None,
                       drafter_settings=pipe.drafter_spec[1] if pipe.drafter is not None else {},
                       drafter_context=pipe.drafter_context, max_reuse=pipe.max_reuse,
                       decode_worker=pipe.decode_worker, strict=pipe.strict, policies=entries,
                       stream=stream if stream is not None else getattr(pipe, "stream_options", None))


__all__ = ["FORMAT", "PolicyEntry", "StackConfig", "StackFileError", "StreamOptions", "dumps", "from_dict",
           "load", "loads", "of_pipeline", "write"]
