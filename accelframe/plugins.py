"""The plugin manager factory and the typed facade the rest of accelframe calls hooks through.

``create_hooks()`` makes a fresh pluggy manager (there is no global one), registers the core's
own plugins, loads the entry points of group ``accelframe`` (unless
``ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD`` is set; ``ACCELFRAME_DISABLE_PLUGINS=a,b`` blocks named
ones) and returns a :class:`Hooks` facade. A plugin that fails to import is reported with its name
and error and the others still load.

Decision hooks are ``firstresult``. The facade walks their implementations itself, in a fixed
order (the pipeline's policy stack in the order policies were added, then module-level plugins in
pluggy's order, then the exact fallback), so that it can name the plugin that answered or failed;
pluggy's own ``firstresult`` cannot tell. Its methods are typed with the contexts and answers of
:mod:`accelframe.types`, as the hook specifications are; an answer is what a plugin returned, so
callers still check it (the engine and the stream loop answer nonsense with the exact path).
"""

from __future__ import annotations

import os
import threading
import warnings
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable

import attrs
import pluggy

from accelframe import hookspecs
from accelframe import policy as pol
from accelframe.errors import PluginError, PluginLoadWarning
from accelframe.hookspecs import hookimpl as hookimpl  # re-exported: ``from accelframe.plugins import hookimpl``
from accelframe.registry import Registry
from accelframe.types import (
    BatchContext,
    BatchPlan,
    BlockContext,
    BlockVerdict,
    GenerationInfo,
    KVAction,
    KVContext,
    ModelCall,
    ModelRole,
    NoiseContext,
    StepContext,
    StepDecision,
)

if TYPE_CHECKING:  # the plugin manager starts without torch (accelframe --help)
    import torch

ENTRY_POINT_GROUP = "accelframe"
AUTOLOAD_ENV = "ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_ENV = "ACCELFRAME_DISABLE_PLUGINS"
EXACT = "accelframe.exact"
RUNNER = "accelframe.runner"
CORE_PLUGINS = (EXACT, RUNNER)

_REGISTRATION = {
    "accelframe_register_adapters": "adapter_callback",
    "accelframe_register_policies": "policy_callback",
    "accelframe_register_scorers": "scorer_callback",
    "accelframe_register_commands": "command_callback",
    "accelframe_register_sources": "source_callback",
}


@attrs.frozen(kw_only=True)
class LoadFailure:
    """An entry point that could not be imported or registered."""

    name: str
    value: str
    error: str


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What ``accelframe plugins --json`` prints for one plugin."""

    name: str
    version: str | None
    kind: str  # "core", "entry-point", "policy", "registered", or "blocked" (by ACCELFRAME_DISABLE_PLUGINS)
    hooks: tuple[str, ...]
    distribution: str | None = None


@attrs.define(eq=False)
class _Shared:
    """What the views of one manager share: a version bumped whenever plugins change, and the
    registry built from them (None until asked again)."""

    version: int = 0
    registry: Registry | None = None
    # serialises choosing a free name and registering under it (pipelines in several threads)
    naming: threading.Lock = attrs.field(factory=threading.Lock)


class HookRaised(Exception):
    """Raised by the facade when a plugin's decision hook raised; carries the plugin's name."""

    def __init__(self, hook: str, plugin: str, error: BaseException) -> None:
        self.hook, self.plugin, self.error = hook, plugin, error
        super().__init__(f"{plugin} raised in {hook}: {error!r}")


# one entry of a prepared call list: (function, argument names, plugin name)
_Impl = tuple[Callable[..., Any], tuple[str, ...], str]


def _disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def create_hooks(
    *,
    autoload: bool | None = None,
    disabled: Iterable[str] | None = None,
    plugins: Iterable[object] = (),
) -> Hooks:
    """A new plugin manager behind its facade.

    ``autoload=None`` follows ``ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD``; ``disabled=None`` follows
    ``ACCELFRAME_DISABLE_PLUGINS``. ``plugins`` are registered after the entry points.
    """
    from accelframe import fallback  # the core's own plugins

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    hooks = Hooks(pm)
    hooks.register(fallback.ExactFallback(), name=EXACT, kind="core")
    hooks.register(fallback.Runner(), name=RUNNER, kind="core")
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    blocked = set(disabled) if disabled is not None else _disabled_from_env()
    # the core's plugins are the exact path and the innermost model call: never blocked
    # (pluggy's set_blocked would unregister them, leaving decisions and calls unanswered)
    blocked -= set(CORE_PLUGINS)
    for name in blocked:
        pm.set_blocked(name)
    if autoload:
        hooks.load_entry_points(blocked)
    plugins = list(plugins)
    for plugin in plugins:
        hooks.register(plugin)
    if autoload and disabled is None:  # the names came from the environment: say which match nothing
        _warn_unknown_disabled(blocked, {pm.get_canonical_name(p) for p in plugins})
    return hooks


_warned_unknown: set[tuple[str, ...]] = set()  # said once per process (a pipeline makes its own manager)


def _warn_unknown_disabled(blocked: set[str], others: set[str]) -> None:
    """One warning for names in ``ACCELFRAME_DISABLE_PLUGINS`` that no entry point (nor a plugin
    registered with the manager) has: a misspelt name blocks nothing, silently otherwise."""
    from accelframe.validators import close_matches

    known = sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
    unknown = tuple(sorted(blocked - set(known) - others))
    if not unknown or unknown in _warned_unknown:
        return
    _warned_unknown.add(unknown)
    hints = [f"did you mean {c[0]!r} for {n!r}?" for n in unknown if (c := close_matches(n, known))]
    warnings.warn(f"{DISABLE_ENV}: no plugin has the name {', '.join(map(repr, unknown))} (nothing blocked by it)"
                  + (f" ({' '.join(hints)})" if hints else "")
                  + f"; known plugins: {', '.join(known) if known else 'none'}", UserWarning, stacklevel=3)


class Hooks:
    """Typed facade over one pluggy manager: one method per hook, plus registration helpers.

    A facade is a view with its own policy stack (:meth:`with_stack`): a pipeline holds its view,
    so nothing is switched on a shared manager before a run. Only the plugin names are shared; a
    policy whose label another pipeline took registers as ``label@2`` (:meth:`register_policy`)."""

    def __init__(self, pm: pluggy.PluginManager, *, stack: Iterable[str] = (),
                 _of: Hooks | None = None) -> None:
        self.pm = pm
        # what every view of this manager shares (see :meth:`with_stack`)
        self._shared = _of._shared if _of is not None else _Shared()
        self.failures: list[LoadFailure] = _of.failures if _of is not None else []
        self._kinds: dict[str, str] = _of._kinds if _of is not None else {}
        # plugin name -> the name a pipeline's stack shows
        self._labels: dict[str, str] = _of._labels if _of is not None else {}
        self._dists: dict[str, tuple[str, str]] = _of._dists if _of is not None else {}
        # this view's own: its policy stack and the call lists prepared for it
        self._stack: tuple[str, ...] = tuple(stack)
        self._prepared: dict[Hashable, list[_Impl]] = {}
        self._prepared_version = self._shared.version

    def with_stack(self, names: Iterable[str]) -> Hooks:
        """A view of the same plugin manager that asks the policy stack ``names`` (plugin names,
        in the order policies were added: asked first).

        Policies registered by a pipeline (kind ``"policy"``) that are not in ``names`` belong to
        another pipeline sharing this manager and are not asked. Views share the manager and its
        bookkeeping; each keeps its own stack and prepared call lists, so pipelines sharing one
        manager can run in parallel threads without seeing each other's policies."""
        return Hooks(self.pm, stack=names, _of=self)

    @property
    def stack(self) -> tuple[str, ...]:
        return self._stack

    def _changed(self) -> None:
        """The manager's plugins changed: every view rebuilds its registry and call lists."""
        self._shared.version += 1
        self._shared.registry = None

    # ---- plugins --------------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None, kind: str = "registered",
                 label: str | None = None) -> str:
        """Register a plugin; a hook it misspells or implements with the wrong signature raises
        :class:`~accelframe.errors.PluginError` naming the plugin, and nothing is left registered.

        ``label`` is the name traces and warnings give the plugin (a pipeline's stack name, which
        may differ from its name in a manager that several pipelines share)."""
        try:
            registered = self.pm.register(plugin, name=name)
        except ValueError as exc:  # a name that is taken, or an object registered twice
            raise PluginError(f"cannot register plugin {name or plugin!r}: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} does not match the hook specs: {exc}") from exc
        if registered is None:  # blocked by name
            return name or ""
        pname = self.pm.get_name(plugin) or ""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            known = ", ".join(sorted(h for h in dir(self.pm.hook) if h.startswith("accelframe_")))
            raise PluginError(
                f"plugin {pname!r} implements a hook accelframe does not define ({exc}); "
                f"known hooks: {known}"
            ) from exc
        plain = [i for i in self.pm.hook.accelframe_model_call.get_hookimpls()
                 if i.plugin_name == pname and not (i.wrapper or i.hookwrapper)]
        if plain and pname != RUNNER:
            self.pm.unregister(plugin)
            raise PluginError(
                f"plugin {pname!r} implements accelframe_model_call without wrapper=True; only the "
                "core runs model calls (use @hookimpl(wrapper=True) to time or trace them)")
        self._kinds[pname] = kind
        if label is not None:
            self._labels[pname] = label
        self._changed()
        return pname

    def register_policy(self, policy: object, label: str) -> str:
        """Register a pipeline's policy under ``label``, or ``label@2``, ``label@3``, ... when
        another pipeline on this manager took the name; returns the plugin name. Traces and
        warnings show ``label``. Choosing the name and registering are one step, so pipelines
        adding policies from several threads never pick the same name."""
        with self._shared.naming:
            name, k = label, 2
            while self.pm.has_plugin(name) or self.pm.is_blocked(name):
                name, k = f"{label}@{k}", k + 1
            return self.register(policy, name=name, kind="policy", label=label)

    def unregister(self, plugin: object) -> None:
        name = self.pm.get_name(plugin)
        self.pm.unregister(plugin)
        self._kinds.pop(name or "", None)
        self._labels.pop(name or "", None)
        self._changed()

    def load_entry_points(self, blocked: set[str]) -> None:
        """Import and register every entry point of group ``accelframe`` not in ``blocked``."""
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in blocked or self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name, kind="entry-point")
            except Exception as exc:  # any import error: report it, keep the other plugins
                failure = LoadFailure(name=ep.name, value=ep.value, error=f"{type(exc).__name__}: {exc}")
                self.failures.append(failure)
                warnings.warn(
                    f"accelframe plugin {ep.name!r} ({ep.value}) failed to load: {failure.error}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            if ep.dist is not None:
                self._dists[ep.name] = (ep.dist.metadata["Name"], ep.dist.version)

    def plugin_infos(self) -> list[PluginInfo]:
        """Name, version, kind and implemented hooks of every registered plugin."""
        from accelframe import __version__

        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda p: p[0]):
            if plugin is None or self.pm.is_blocked(name):  # ACCELFRAME_DISABLE_PLUGINS: not loaded
                infos.append(PluginInfo(name=name, version=None, kind="blocked", hooks=()))
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            kind = self._kinds.get(name, "registered")
            dist, version = self._dists.get(name, (None, None))
            if kind == "core":
                dist, version = "accelframe", __version__
            infos.append(PluginInfo(name=name, version=version, kind=kind, hooks=hooks,
                                    distribution=dist))
        return infos

    # ---- registration hooks ---------------------------------------------------------------------

    def registry(self) -> Registry:
        """The names every plugin registered, built once (and again after plugins change).

        Each registration hook is called plugin by plugin, with a callback that knows the
        plugin's name, so a duplicate name is reported with both plugins."""
        if self._shared.registry is None:
            reg = Registry()
            for hook_name, callback in _REGISTRATION.items():
                # registration order, so that a duplicate names the plugin that came first first
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    register = getattr(reg, callback)(impl.plugin_name)
                    impl.function(*[{"register": register}[a] for a in impl.argnames])
            self._shared.registry = reg
        return self._shared.registry

    # ---- lifecycle ------------------------------------------------------------------------------

    def implemented(self, hook_name: str) -> bool:
        """True when some plugin of the current stack (or module level) implements the hook."""
        return bool(self._impls(hook_name))

    def generation_start(self, info: GenerationInfo) -> list[HookRaised]:
        """Tell the current stack (and module-level plugins) a generation starts; returns the
        errors raised (not re-raised)."""
        return self.each("accelframe_generation_start",
                          self._impls("accelframe_generation_start"), {"info": info})

    def generation_end(self, info: GenerationInfo, stats: dict[str, Any]) -> list[HookRaised]:
        return self.each("accelframe_generation_end", self._impls("accelframe_generation_end"),
                          {"info": info, "stats": stats})

    # ---- prepared call lists for the per-call hooks ---------------------------------------------

    def _fresh(self) -> dict[Hashable, list[_Impl]]:
        """This view's prepared call lists, emptied when plugins changed since they were made."""
        if self._prepared_version != self._shared.version:
            self._prepared = {}
            self._prepared_version = self._shared.version
        return self._prepared

    def _impls(self, hook_name: str, model: ModelRole | None = None) -> list[_Impl]:
        key = (hook_name, model)
        found = self._fresh().get(key)
        if found is not None:
            return found
        caller = getattr(self.pm.hook, hook_name)
        rank = {name: k for k, name in enumerate(self._stack)}
        impls = [i for i in reversed(caller.get_hookimpls())
                 if not (i.wrapper or i.hookwrapper)
                 # another pipeline's policy on a shared manager: not part of this stack
                 and not (self._kinds.get(i.plugin_name) == "policy" and i.plugin_name not in rank)]
        # stack policies in stack order; then other plugins in pluggy order; the fallback last
        impls.sort(key=lambda i: (i.plugin_name == EXACT, rank.get(i.plugin_name, len(rank))))
        out: list[_Impl] = []
        for impl in impls:
            if model is not None:
                applies = pol.applies_to(impl.plugin, self._labels.get(impl.plugin_name, impl.plugin_name))
                if not applies.covers(model):
                    continue
            out.append((impl.function, tuple(impl.argnames),
                        self._labels.get(impl.plugin_name, impl.plugin_name)))
        self._prepared[key] = out
        return out

    def step_impls(self, model: ModelRole) -> tuple[list[_Impl], list[_Impl]]:
        """The prepared (decide, observe) call lists for one model, for the engine's hot path."""
        return (self._impls("accelframe_step_decide", model),
                self._impls("accelframe_step_observe", model))

    def step_observe(self, impls: list[_Impl], ctx: StepContext, decision: StepDecision,
                     velocity: torch.Tensor) -> list[HookRaised]:
        """:meth:`each` for ``accelframe_step_observe``, without building a dict (hot path)."""
        errors = []
        for fn, argnames, plugin in impls:
            try:
                if len(argnames) == 3:  # (ctx, decision, velocity): the spec's order
                    fn(ctx, decision, velocity)
                else:
                    named = {"ctx": ctx, "decision": decision, "velocity": velocity}
                    fn(*[named[a] for a in argnames])
            except Exception as exc:
                errors.append(HookRaised("accelframe_step_observe", plugin, exc))
        return errors

    def first_ctx(self, hook_name: str, impls: list[_Impl], ctx: object) -> tuple[Any, str]:
        """Call ``impls`` in order until one answers: (answer, plugin), or (None, the fallback's
        name) when none does. Decision hooks take ``ctx`` alone. Raises :class:`HookRaised`.
        The engine's step decisions come through here (``accelframe_step_decide`` with the lists
        of :meth:`step_impls`: a :class:`StepContext` in, a :class:`StepDecision` or None out); the
        typed methods below wrap it for the other decision hooks."""
        for fn, argnames, plugin in impls:
            try:
                result = fn(ctx) if argnames else fn()
            except Exception as exc:
                raise HookRaised(hook_name, plugin, exc) from exc
            if result is not None:
                return result, plugin
        return None, EXACT

    def each(self, hook_name: str, impls: list[_Impl], kwargs: dict[str, Any]) -> list[HookRaised]:
        """Call every one of ``impls``; returns the errors raised (not re-raised)."""
        errors = []
        for fn, argnames, plugin in impls:
            try:
                fn(*map(kwargs.__getitem__, argnames))
            except Exception as exc:
                errors.append(HookRaised(hook_name, plugin, exc))
        return errors

    # ---- block level ----------------------------------------------------------------------------

    def block_early_verdict(self, ctx: BlockContext) -> tuple[BlockVerdict | None, str]:
        """The first answer of ``accelframe_block_early_verdict`` (the fallback does not answer it)."""
        return self.first_ctx("accelframe_block_early_verdict",
                              self._impls("accelframe_block_early_verdict"), ctx)

    def block_verdict(self, ctx: BlockContext) -> tuple[BlockVerdict | None, str]:
        return self.first_ctx("accelframe_block_verdict", self._impls("accelframe_block_verdict"), ctx)

    def block_observe(self, ctx: BlockContext, verdict: BlockVerdict) -> list[HookRaised]:
        return self.each("accelframe_block_observe", self._impls("accelframe_block_observe"),
                          {"ctx": ctx, "verdict": verdict})

    # ---- batch / stream level -------------------------------------------------------------------

    def batch_plan(self, ctx: BatchContext) -> tuple[BatchPlan | None, str]:
        return self.first_ctx("accelframe_batch_plan", self._impls("accelframe_batch_plan"), ctx)

    def kv_manage(self, ctx: KVContext) -> tuple[KVAction | None, str]:
        return self.first_ctx("accelframe_kv_manage", self._impls("accelframe_kv_manage"), ctx)

    def noise_level(self, ctx: NoiseContext) -> tuple[float | None, str]:
        return self.first_ctx("accelframe_noise_level", self._impls("accelframe_noise_level"), ctx)

    def batch_admit(self, ctx: BatchContext, fps: float, deadline_s: float | None) -> tuple[str | None, str]:
        """The first refusal ``(reason, plugin)`` of ``accelframe_batch_admit``, or ``(None, EXACT)``.
        Raises :class:`HookRaised`."""
        named = {"ctx": ctx, "fps": fps, "deadline_s": deadline_s}
        for fn, argnames, plugin in self._impls("accelframe_batch_admit"):
            try:
                reason = fn(*[named[a] for a in argnames])
            except Exception as exc:
                raise HookRaised("accelframe_batch_admit", plugin, exc) from exc
            if reason is not None:
                return str(reason), plugin
        return None, EXACT

    def batch_observe(self, ctx: BatchContext, plan: BatchPlan, latency_s: float) -> list[HookRaised]:
        return self.each("accelframe_batch_observe", self._impls("accelframe_batch_observe"),
                          {"ctx": ctx, "plan": plan, "latency_s": latency_s})

    # ---- around every model call ----------------------------------------------------------------

    @property
    def wraps_model_calls(self) -> bool:
        """True when some plugin besides the core's runner implements the model-call hook."""
        key = ("accelframe_model_call", "wrapped")
        found = self._fresh().get(key)
        if found is None:
            impls = self.pm.hook.accelframe_model_call.get_hookimpls()
            found = [("", (), i.plugin_name) for i in impls if i.plugin_name != RUNNER]
            self._prepared[key] = found
        return bool(found)

    def model_call(self, call: ModelCall) -> torch.Tensor:
        """Run a model call through the wrapper hooks (the core's runner is innermost)."""
        return self.pm.hook.accelframe_model_call(call=call)

