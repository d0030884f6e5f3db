"""Composition: one adapter, an optional drafter, and an ordered stack of policies.

    pipe = Pipeline("analytic", adapter_kwargs={"steps": 8})
    pipe.use("every-n", n=2).use(MyPolicy())
    result = pipe.generate(["a red circle moves left"], num_frames=9, seed=0)

``use`` takes a registered policy name with keyword arguments (validated by the policy's
factory) or any object with hook implementations. What a policy declares besides its hooks
(:class:`accelframe.policy.Policy`: ``name``, ``applies_to``, ``requires``, ``made_for``,
``bind``, ``check_request``, ``reset``) is read through :mod:`accelframe.policy`: ``bind`` when the
policy is added (to look up registered names, such as a scorer, before anything runs),
``check_request`` when a request is validated, ``reset`` before every generation and streaming
run. Policies are asked in the order they were added. Everything that can be checked is checked
before the first model call: names, keyword arguments, what each policy declares and the adapter's
capabilities against what it requires, each adapter's declared capabilities against the members
they need (:func:`accelframe.adapter.check_features`), a drafter against its target. A pipeline
is reusable: every generation starts with fresh policy state (``reset``). Pipelines may share one
plugin manager and run in parallel threads; one pipeline runs one generation at a time (a
concurrent second one raises :class:`~accelframe.errors.PipelineBusyError`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import attrs

from accelframe import adapter as caps
from accelframe import policy as pol
from accelframe.adapter import Adapter
from accelframe.engine import Engine, Result
from accelframe.errors import ConfigError, IncompatibleError, PipelineBusyError
from accelframe.plugins import Hooks, create_hooks
from accelframe.trace import Trace
from accelframe.types import DRAFTER_CONTEXTS, DRAFTER_CONTEXTS_ALLOWED, AppliesTo, Request



@attrs.frozen(kw_only=True, eq=False)
class StackedPolicy:
    """One policy of a pipeline's stack."""

    name: str  # unique within the pipeline (``every-n``, ``every-n#2``); traces show it
    kind: str  # "step", "block" or "batch"
    policy: Any
    applies_to: AppliesTo
    plugin: str = ""  # its name in the plugin manager, unique when pipelines share a manager
    registered: str = ""  # the registered name it was made from ("" for an object)
    settings: dict[str, Any] | None = None  # the keyword arguments it was made with (None: an object)


def call_factory(factory: Any, name: str, kwargs: dict[str, Any]) -> Any:
    """Call a registered factory (adapter, policy, scorer, config class) with keyword arguments.

    The keywords it takes come from :func:`accelframe.knobs.knobs` (its signature, its attrs
    fields, or what it declares): an unknown keyword is a ConfigError that lists the valid ones,
    closest match first, and a missing required one is a ConfigError naming it, both before the
    factory runs. A factory whose keywords cannot be known is called, and a keyword it refuses is
    reported the same way."""
    from accelframe import knobs as kn

    found = kn.check_keywords(name, factory, kwargs)
    try:
        return factory(**kwargs)
    except TypeError as exc:  # a **kwargs factory whose keywords could not be known beforehand
        text = str(exc)
        if "unexpected keyword argument" in text and "'" in text:
            key = text.rsplit("'", 2)[-2]
            raise ConfigError(name, key, kwargs.get(key), kn.unknown_keyword_allowed(
                key, [k.name for k in found or ()]) if found else f"a keyword it takes ({exc})") from exc
        if "missing" in text and "required" in text and "'" in text:
            key = text.rsplit("'", 2)[-2]
            raise ConfigError(name, key, kn.MISSING, "a value: it is required") from exc
        raise


class Pipeline:
    """A target adapter, an optional drafter, and a stack of policies; see the module docstring."""

    def __init__(
        self,
        adapter: str | Adapter,
        *,
        drafter: str | Adapter | None = None,
        adapter_kwargs: dict[str, Any] | None = None,
        drafter_kwargs: dict[str, Any] | None = None,
        hooks: Hooks | None = None,
        strict: bool = False,
        trace: bool = True,
        max_reuse: int | None = None,
        drafter_context: str = "own",
        decode_worker: bool = False,
    ) -> None:
        # every argument is checked before anything is built or loaded (adapters: in _adapter)
        for field, value in (("adapter_kwargs", adapter_kwargs), ("drafter_kwargs", drafter_kwargs)):
            if value is not None and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
                raise ConfigError("Pipeline", field, value, "None or a dict of keyword arguments (str keys)")
        for field, value in (("strict", strict), ("trace", trace), ("decode_worker", decode_worker)):
            if not isinstance(value, bool):
                raise ConfigError("Pipeline", field, value, "True or False")
        if hooks is not None and not isinstance(hooks, Hooks):
            raise ConfigError("Pipeline", "hooks", hooks,
                              "None or an accelframe.plugins.Hooks (accelframe.plugins.create_hooks())")
        if not isinstance(drafter_context, str) or drafter_context not in DRAFTER_CONTEXTS:
            raise ConfigError("Pipeline", "drafter_context", drafter_context, DRAFTER_CONTEXTS_ALLOWED)
        self.drafter_context = drafter_context
        if max_reuse is not None and (not isinstance(max_reuse, int) or isinstance(max_reuse, bool)
                                      or max_reuse < 1):
            raise ConfigError("Pipeline", "max_reuse", max_reuse,
                              "None or an int >= 1 (non-recompute calls allowed in a row)")
        self.max_reuse = max_reuse
        # decode (and score drafts) on a thread of its own beside the denoising (accelframe.engine);
        # the stream batch decodes the target's chunks there (accelframe.streaming.batch)
        self.decode_worker = decode_worker
        # this pipeline's view of the plugin manager, which other pipelines may share: the view
        # asks this pipeline's stack only (Hooks.with_stack), so runs on a shared manager in
        # parallel threads never see each other's policies
        self.hooks = (hooks if hooks is not None else create_hooks()).with_stack(())
        self._running = threading.Lock()  # held by generate / stream; see _exclusive
        self.registry = self.hooks.registry()
        self.adapter, self.adapter_name = self._adapter(adapter, adapter_kwargs, "adapter")
        # what a stack file records (to_config): a registered name and its settings, None for an object
        self.adapter_spec = (adapter, dict(adapter_kwargs or {})) if isinstance(adapter, str) else None
        self.drafter, self.drafter_name = (None, None)
        self.drafter_spec = (drafter, dict(drafter_kwargs or {})) if isinstance(drafter, str) else None
        if drafter is not None:
            self.drafter, self.drafter_name = self._adapter(drafter, drafter_kwargs, "drafter")
            self._check_drafter()
        self.stream_options: Any = None  # a stack file's [stream] table (accelframe.stackfile.StreamOptions)
        self.strict = strict
        self.trace = trace
        self.stack: list[StackedPolicy] = []
        self._generation = 0

    def _adapter(self, spec: str | Adapter, kwargs: dict[str, Any] | None,
                 role: str) -> tuple[Adapter, str]:
        if isinstance(spec, str):
            entry = self.registry.get("adapter", spec)
            # errors name the role ("drafter 'self-forcing'"): a stack file maps them to its key
            built, name = call_factory(entry.factory, f"{role} {spec!r}", dict(kwargs or {})), spec
        else:
            if kwargs:
                raise ConfigError("Pipeline", f"{role}_kwargs", kwargs,
                                  f"empty when the {role} is given as an object")
            if not isinstance(spec, Adapter):
                raise ConfigError("Pipeline", "adapter", spec,
                                  "a registered adapter name or an object implementing "
                                  "accelframe.adapter.Adapter")
            built, name = spec, caps.adapter_name(spec)
        # a declared capability has its methods (decode -> decode(), ...), before any policy relies on it
        caps.check_features(built, name)
        return built, name

    def _check_drafter(self) -> None:
        t, d = self.adapter, self.drafter
        assert d is not None
        problems = []
        for who, a in (("target", t), ("drafter", d)):
            if caps.BLOCK_UNITS not in a.capabilities:
                problems.append(f"the {who} {caps.adapter_name(a)!r} does not denoise one unit "
                                "at a time (no 'block_units' capability)")
        if tuple(t.latent_shape) != tuple(d.latent_shape):
            problems.append(f"latent shapes differ: target {tuple(t.latent_shape)}, drafter "
                            f"{tuple(d.latent_shape)}")
        if t.unit_frames != d.unit_frames:
            problems.append(f"unit sizes differ: target {t.unit_frames} frames, drafter "
                            f"{d.unit_frames}")
        # the engine snapshots the target before decoding a draft and restores it on a reject, and
        # with the "emitted" context restores the drafter too
        needs = [("target", t)] + ([("drafter", d)] if self.drafter_context == "emitted" else [])
        for who, a in needs:
            if caps.feature(a, caps.Snapshots) is None:
                problems.append(f"the {who} {caps.adapter_name(a)!r} cannot snapshot and restore its caches "
                                "(no snapshot() / restore(): accelframe.adapter.Snapshots)")
        t_vae, d_vae = caps.vae_key(t), caps.vae_key(d)
        if t_vae is not None and d_vae is not None and t_vae != d_vae:
            problems.append(f"VAEs differ (the target's decodes the drafts): target {t_vae}, "
                            f"drafter {d_vae}")
        if problems:
            raise IncompatibleError("drafter and target cannot work together: " + "; ".join(problems))

    # ---- the stack ------------------------------------------------------------------------------

    def use(self, policy: str | Any, **kwargs: Any) -> Pipeline:
        """Add a policy by registered name (with validated keyword arguments) or as an object."""
        if isinstance(policy, str):
            entry = self.registry.get("policy", policy)
            obj = call_factory(entry.factory, f"policy {policy!r}", kwargs)
            kind, base = entry.policy_kind or pol.kind_of(obj), policy
            registered, settings = policy, dict(kwargs)
        else:
            if kwargs:
                raise ConfigError("Pipeline.use", next(iter(kwargs)), next(iter(kwargs.values())),
                                  "no keyword arguments when the policy is given as an object")
            obj, kind = policy, pol.kind_of(policy)
            base = pol.policy_name(policy)
            registered, settings = "", None
        applies = pol.applies_to(obj, base)
        self._check_policy(base, kind, obj, applies)
        pol.check(obj, base)  # the rest it declares besides its hooks, before any of it is called
        # a policy that looks up registered names (a scorer) does it now
        pol.bind(obj, base, registry=self.registry, pipeline=self)
        name, k = base, 2
        taken = {p.name for p in self.stack}
        while name in taken:
            name, k = f"{base}#{k}", k + 1
        with self._exclusive("use"):
            # its name in the manager, which other pipelines may share, is unique there too
            plugin = self.hooks.register_policy(obj, label=name)
            self.stack.append(StackedPolicy(name=name, kind=kind, policy=obj, applies_to=applies,
                                            plugin=plugin, registered=registered, settings=settings))
            self.hooks = self.hooks.with_stack(self._plugins())
        return self

    def _plugins(self) -> list[str]:
        """The stack's plugin-manager names, in stack order."""
        return [p.plugin for p in self.stack]

    def remove(self, name: str) -> Pipeline:
        """Take a policy off the stack by its stack name."""
        for p in self.stack:
            if p.name == name:
                with self._exclusive("remove"):
                    self.hooks.unregister(p.policy)
                    self.stack.remove(p)
                    self.hooks = self.hooks.with_stack(self._plugins())
                return self
        raise ConfigError("Pipeline.remove", "name", name,
                          "one of " + ", ".join(p.name for p in self.stack) if self.stack
                          else "nothing: the stack is empty")

    def _check_policy(self, name: str, kind: str, obj: Any, applies: AppliesTo) -> None:
        if kind == "block" and self.drafter is None:
            raise IncompatibleError(
                f"policy {name!r} is a block policy and routes drafted units: give the pipeline a "
                "drafter (Pipeline(..., drafter=...))")
        if kind == "step" and applies is AppliesTo.DRAFTER and self.drafter is None:
            raise IncompatibleError(f"step policy {name!r} applies to the drafter only, and the "
                                    "pipeline has no drafter")
        needed = pol.requirements(obj, name)
        models = [(self.adapter_name, self.adapter)]
        if self.drafter is not None and applies is not AppliesTo.TARGET:
            models.append((self.drafter_name, self.drafter))
        if applies is AppliesTo.DRAFTER:
            models = models[1:]
        for mname, a in models:
            missing = needed - a.capabilities
            if missing:
                made_for = pol.made_for(obj, name)  # the adapter a preset was made for
                hint = (f"; its settings were made for adapter {made_for!r} (--adapter {made_for})"
                        if made_for is not None and made_for != mname else "")
                raise IncompatibleError(
                    f"policy {name!r} needs {', '.join(sorted(missing))} from adapter {mname!r}, "
                    f"which offers only {', '.join(sorted(a.capabilities)) or 'nothing'}{hint}")

    @property
    def policies(self) -> list[str]:
        return [p.name for p in self.stack]

    # ---- stack files ----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Any, *, hooks: Hooks | None = None, trace: bool = True,
                    **overrides: Any) -> Pipeline:
        """The pipeline a stack file describes (:mod:`accelframe.stackfile`): ``config`` is its
        path or a :class:`~accelframe.stackfile.StackConfig`. A bad file raises
        :class:`~accelframe.stackfile.StackFileError` naming the file and the key, before any
        model call. ``overrides``: other constructor arguments, winning over the file's."""
        from accelframe import stackfile
        from accelframe.errors import AccelframeError

        cfg = config if isinstance(config, stackfile.StackConfig) else stackfile.load(config)
        kwargs = {"drafter_context": cfg.drafter_context, "max_reuse": cfg.max_reuse,
                  "decode_worker": cfg.decode_worker, "strict": cfg.strict, **overrides}
        try:
            pipe = cls(cfg.adapter, adapter_kwargs=dict(cfg.adapter_settings), drafter=cfg.drafter,
                       drafter_kwargs=dict(cfg.drafter_settings) if cfg.drafter else None, hooks=hooks,
                       trace=trace, **kwargs)
        except AccelframeError as exc:
            raise cfg.error(exc) from exc
        try:
            for i, p in enumerate(cfg.policies):
                try:
                    pipe.use(p.name, **p.settings)
                except AccelframeError as exc:
                    raise cfg.error(exc, i) from exc
        except BaseException:
            pipe.close()
            raise
        pipe.stream_options = cfg.stream
        return pipe

    def to_config(self) -> Any:
        """This pipeline as a :class:`~accelframe.stackfile.StackConfig` (``.to_toml()`` is the
        file's text): ``Pipeline.from_config(pipe.to_config())`` builds the same pipeline. An
        adapter or policy given as an object cannot be written: a ConfigError names it."""
        from accelframe import stackfile

        return stackfile.of_pipeline(self)

    # ---- running --------------------------------------------------------------------------------

    def request(self, prompts: Request | str | Sequence[str] | None = None, **kwargs: Any) -> Request:
        """A validated request for this pipeline (raises before any model call)."""
        if isinstance(prompts, Request):
            if kwargs:
                raise ConfigError("Pipeline.generate", next(iter(kwargs)), kwargs,
                                  "no keyword arguments with a Request")
            req = prompts
        else:
            # one string is one prompt; a value that is no sequence of prompts is a ConfigError
            req = Request(prompts=prompts, **kwargs)
        from accelframe.limits import check_request

        if req.decode and caps.feature(self.adapter, caps.Decoder) is None:
            raise ConfigError("Pipeline.generate", "decode", True,
                              f"False: the adapter {self.adapter_name!r} has no decode() "
                              "(accelframe.adapter.Decoder), so it cannot make pixels")
        self.adapter.validate(req)
        if self.drafter is not None:
            self.drafter.validate(req)
        # the adapters' declared limits and the memory estimate: before any unit is listed or allocated
        check_request([(self.adapter_name, self.adapter)]
                      + ([(self.drafter_name, self.drafter)] if self.drafter is not None else []), req)
        if self.drafter is not None:
            t_units = [u.frames for u in self.adapter.units(req)]
            d_units = [u.frames for u in self.drafter.units(req)]
            if t_units != d_units:
                raise IncompatibleError(f"drafter units {d_units} differ from target units {t_units}")
        for p in self.stack:  # what a policy needs of a request (SDVG: decoded frames to score)
            pol.check_request(p.policy, req, p.name)
        return req

    def reset_policies(self) -> None:
        """Give every policy of the stack fresh per-run state (before a generation or a stream).
        For the run that holds the pipeline (``generate``, or the stream loop inside ``stream``):
        called from elsewhere while a run goes on, it would reset that run's policies."""
        for p in self.stack:
            pol.reset(p.policy, p.name)

    def new_generation(self) -> int:
        """The next generation number of this pipeline (hooks see it in ``GenerationInfo``; a
        streaming run takes one per stream). For the run that holds the pipeline, like
        :meth:`reset_policies`."""
        self._generation += 1
        return self._generation

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """Hold the pipeline for one generation, stream or stack change.

        Policies keep per-generation state on their objects, so a pipeline runs one generation
        at a time: a second ``generate`` / ``stream`` (or a stack change) from another thread
        while one runs raises :class:`~accelframe.errors.PipelineBusyError` instead of mixing
        the two runs' state. Pipelines that share a plugin manager do run in parallel."""
        if not self._running.acquire(blocking=False):
            raise PipelineBusyError(
                f"Pipeline.{what}: this pipeline is already running a generation or stream in "
                "another thread; policies keep per-run state, so wait for it, or give each "
                "thread its own Pipeline (pipelines may share one plugin manager)")
        try:
            yield
        finally:
            self._running.release()

    def engine(self, *, trace: Trace | None = None, **kwargs: Any) -> Engine:
        """A fresh engine for one generation (the streaming runtime makes one per chunk).

        ``trace``: a trace the engine records into (a stream's one trace over all its chunks);
        None gives the engine its own, kept when the pipeline's ``trace`` is on."""
        return Engine(self.hooks, target=self.adapter, target_name=self.adapter_name,
                      drafter=self.drafter, drafter_name=self.drafter_name, strict=self.strict,
                      trace=self.trace if trace is None else trace, registry=self.registry,
                      max_reuse=self.max_reuse, drafter_context=self.drafter_context,
                      **{"decode_worker": self.decode_worker, **kwargs})

    def generate(self, prompts: Request | str | Sequence[str] | None = None, *,
                 on_unit: Callable[..., None] | None = None, **kwargs: Any) -> Result:
        """Generate a video; ``kwargs`` are :class:`~accelframe.types.Request` fields.

        ``on_unit(span, pixels, source)`` is called as each unit is emitted (progress bars,
        streaming previews)."""
        req = self.request(prompts, **kwargs)
        with self._exclusive("generate"):
            self.reset_policies()
            return self.engine(generation=self.new_generation(), on_unit=on_unit).run(req, keep_state=False)

    def stream(self, sources: Sequence[Any], **kwargs: Any) -> Any:
        """Run input streams through the batch / stream hooks; see :mod:`accelframe.streaming`."""
        from accelframe.streaming import StreamLoop

        with self._exclusive("stream"):
            return StreamLoop(self, sources, **kwargs).run()

    def close(self) -> None:
        """Unregister this pipeline's policies from its plugin manager."""
        with self._exclusive("close"):
            for p in list(self.stack):
                self.hooks.unregister(p.policy)
            self.stack.clear()
            self.hooks = self.hooks.with_stack(())

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build_pipeline(
    adapter: str,
    policies: Iterable[tuple[str, dict[str, Any]]] = (),
    **kwargs: Any,
) -> Pipeline:
    """A pipeline with policies given as ``(name, kwargs)`` pairs (what the CLI uses)."""
    pipe = Pipeline(adapter, **kwargs)
    for name, kw in policies:
        pipe.use(name, **kw)
    return pipe
