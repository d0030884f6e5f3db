"""Named adapters, policies, scorers, CLI commands and stream sources, as the registration hooks
declared them."""

from __future__ import annotations

from typing import Any, Callable

import attrs

from accelframe.errors import ConfigError, DuplicateNameError, UnknownNameError

POLICY_KINDS = ("step", "block", "batch")


@attrs.frozen(kw_only=True)
class Entry:
    """One registered name: what it is, which plugin registered it, and how to build it."""

    kind: str  # "adapter", "policy", "scorer", "command", "source"
    name: str
    plugin: str
    factory: Callable[..., Any] = attrs.field(eq=False, repr=False)
    description: str = ""
    policy_kind: str | None = None  # "step" / "block" / "batch" for policies
    group: str | None = None  # command group ("bench") for commands
    configure: Callable[..., Any] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.define(eq=False)
class Registry:
    """Names by kind. Built once per plugin manager by :meth:`accelframe.plugins.Hooks.registry`."""

    entries: dict[tuple[str, str], Entry] = attrs.field(factory=dict)

    def add(self, entry: Entry) -> None:
        key = (entry.kind, f"{entry.group} {entry.name}" if entry.group else entry.name)
        old = self.entries.get(key)
        if old is not None:
            raise DuplicateNameError(entry.kind, entry.name, old.plugin, entry.plugin)
        self.entries[key] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(e.name for (k, _), e in self.entries.items() if k == kind)

    def get(self, kind: str, name: str) -> Entry:
        entry = self.entries.get((kind, name))
        if entry is None:
            raise UnknownNameError(kind, name, self.names(kind))
        return entry

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for (k, _), e in sorted(self.entries.items()) if k == kind]

    # the callbacks handed to the registration hooks --------------------------------------------

    def adapter_callback(self, plugin: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
            self.add(Entry(kind="adapter", name=name, plugin=plugin, factory=factory,
                           description=description))
        return register

    def policy_callback(self, plugin: str) -> Callable[..., None]:
        def register(
            name: str, factory: Callable[..., Any], kind: str, description: str = ""
        ) -> None:
            if kind not in POLICY_KINDS:
                raise ConfigError(f"policy {name!r} of plugin {plugin!r}", "kind", kind,
                                  "one of " + ", ".join(POLICY_KINDS))
            self.add(Entry(kind="policy", name=name, plugin=plugin, factory=factory,
                           description=description, policy_kind=kind))
        return register

    def scorer_callback(self, plugin: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
            self.add(Entry(kind="scorer", name=name, plugin=plugin, factory=factory,
                           description=description))
        return register

    def command_callback(self, plugin: str) -> Callable[..., None]:
        def register(
            name: str,
            configure: Callable[..., Any],
            run: Callable[..., int],
            help: str = "",
            group: str | None = None,
        ) -> None:
            self.add(Entry(kind="command", name=name, plugin=plugin, factory=run,
                           configure=configure, description=help, group=group))
        return register

    def source_callback(self, plugin: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
            self.add(Entry(kind="source", name=name, plugin=plugin, factory=factory,
                           description=description))
        return register


class LazyFactory:
    """A registered factory named ``"module:attribute"`` and imported on first use, so that
    registering it (and ``accelframe --help`` or ``accelframe plugins``) imports no torch. Calling it
    calls the target; ``inspect.signature`` sees the target's parameters (keyword checks and
    ``accelframe plugins NAME`` work as for the target itself); ``resolve()`` returns the target."""

    def __init__(self, target: str) -> None:
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ConfigError("lazy", "target", target, "'package.module:attribute'")
        self.target = target
        self._module, self._attr = module, attr
        self._resolved: Callable[..., Any] | None = None
        self.__name__ = self.__qualname__ = attr.rsplit(".", 1)[-1]
        self.__module__ = module

    def resolve(self) -> Callable[..., Any]:
        if self._resolved is None:
            import importlib

            obj: Any = importlib.import_module(self._module)
            for part in self._attr.split("."):
                obj = getattr(obj, part)
            self._resolved = obj
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> Any:
        import inspect

        return inspect.signature(self.resolve())

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> LazyFactory:
    """``lazy("pkg.module:Class")``: a factory for the registration hooks that imports on first use."""
    return LazyFactory(target)
