"""Which functions a job may name, and how a worker finds and calls them.

A job names its function as `module:qualname`. The worker imports the modules it was
told to (`--import`, `NAQ_IMPORTS`) and resolves a name only inside them: a job naming
anything else is refused without importing a thing, so a message on the queue can
never make a worker import or run code it was not given.

Inside those modules two more rules narrow what a message may name, since a module
holds helpers as well as jobs:

- A name with a part starting with `_` (`mod:_helper`, `mod:Class._private`,
  `mod:_Private.method`) is private and refused, unless that function was registered
  explicitly. This also keeps a message from reaching past a function's policies
  (`mod:func.__wrapped__` is the undecorated function). `function_name` refuses to
  enqueue such a function at all: the client cannot know what a worker registered, and
  a job every worker refuses is a bug best caught when it is enqueued.
- A strict registry (`naq worker --strict`, `NAQ_STRICT=1`) runs only functions marked
  `@job`, or registered explicitly.

A function defined in a script run as `python script.py` lives in `__main__`; it is
named after the script's file (`script:func`) so that a worker started beside it with
`--import script` finds it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import msgspec

from naq_resilience.jetstream.arguments import main_module_name, rebuild_exceptions
from naq_resilience.policies.breaker import BreakerStage
from naq_resilience.policies.compensate import SagaStage
from naq_resilience.policies.errors import DataValidationError
from naq_resilience.policies.marker import is_job
from naq_resilience.policies.pipeline import pipeline_of, rebuild_without
from naq_resilience.policies.retry import RetryPolicy, RetryStage

__all__ = [
    "STRICT_ENV",
    "FunctionRegistry",
    "JobFunction",
    "UnknownFunction",
    "UnroutableJob",
    "function_name",
    "strict_from_env",
]

STRICT_ENV = "NAQ_STRICT"
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})


class UnknownFunction(LookupError):
    """The job names a function this worker may not run; `reason` goes to the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnroutableJob(UnknownFunction):
    """The job names a function this worker cannot find, but another worker may.

    `module` is not one this worker imports (`imported` False: not on its `--import`,
    `NAQ_IMPORTS` or `[tool.naq] imports`), or this worker's version of it has no
    `qualname` (`imported` True: workers running different versions of the module, as
    in a rolling deploy). Nothing of the module is imported for it.

    A worker hands such a job back without using an attempt; when no worker took it for
    `unroutable_after`, it is dead-lettered with a reason starting "unroutable:", and
    the dead letter's `error_type` (and the history's) is `naq_resilience:UnroutableJob`,
    this class's name on the wire.
    """

    def __init__(self, reason: str, *, function: str, module: str, imported: bool) -> None:
        super().__init__(reason)
        self.function = function
        self.module = module
        self.imported = imported


UnroutableJob.__module__ = "naq_resilience"  # its wire name, `naq_resilience:UnroutableJob`


def _main_module_name() -> str:
    name = main_module_name()
    if name is not None:
        return name
    raise ValueError(
        "a function defined in an interactive session cannot be enqueued: a worker could "
        "never import it; define it in a module and pass that module to the worker"
    )


def _instance_method_error(qualname: str, owner: object) -> TypeError:
    return TypeError(
        f"{qualname} is an instance method: a job cannot carry the instance it needs. "
        f"Enqueue a module-level function, or make it a @staticmethod or @classmethod of "
        f"{getattr(owner, '__qualname__', owner)}"
    )


def _is_instance_method(owner: object, attribute: str) -> bool:
    """`owner.attribute` is a plain function defined on class `owner` (needs `self`)."""
    return isinstance(owner, type) and inspect.isfunction(
        inspect.getattr_static(owner, attribute, None)
    )


def strict_from_env() -> bool:
    """Whether `NAQ_STRICT` asks for a strict worker (1, true or yes; unset is no).

    A value that is neither yes nor no is an error rather than a guess, since guessing
    "no" would quietly run every public function of the imported modules.
    """
    raw = os.environ.get(STRICT_ENV, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{STRICT_ENV}={raw!r} is neither yes nor no: set it to 1, true or yes to run only "
        "functions marked @job, or to 0, false or no (or unset it) to run every public "
        "function of the imported modules"
    )


def _private_part(qualname: str) -> str | None:
    return next((part for part in qualname.split(".") if part.startswith("_")), None)


def function_name(func: Callable[..., Any]) -> str:
    """The `module:qualname` a job uses for `func` (decorated or not).

    Module-level functions, and static and class methods of module-level classes
    (`module:Class.method`), can be enqueued; lambdas, nested functions, instance
    methods and classes cannot, since a worker could not find or call them. Nor can
    private functions (a part of the name starts with `_`): a worker runs those only
    when it registered them explicitly, which the client cannot know.
    """
    name = _name_of(func)
    qualname = name.partition(":")[2]
    private = _private_part(qualname)
    if private is not None:
        raise TypeError(
            f"{qualname} cannot be enqueued: {private!r} starts with '_', so the name is "
            "private, and a worker refuses to run a private function unless it was "
            "registered on that worker explicitly (Worker(functions=[...])), which "
            "enqueue cannot check; give it a public name (not starting with '_') to "
            "enqueue it"
        )
    return name


def _name_of(func: Callable[..., Any]) -> str:
    if inspect.ismethod(func) and not isinstance(func.__self__, type):
        raise _instance_method_error(func.__qualname__, type(func.__self__))
    if isinstance(func, type):
        raise TypeError(f"{func.__qualname__} is a class; enqueue a function")
    pipeline = pipeline_of(func)
    target = pipeline.func if pipeline is not None else inspect.unwrap(func)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not module or not qualname:
        raise TypeError(f"{func!r} has no module and name to enqueue it by; pass a function")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise TypeError(
            f"{qualname} cannot be enqueued: a worker can only find functions defined at "
            "module level (not lambdas or functions inside functions)"
        )
    if "." in qualname:  # Class.method: only static and class methods can be called bare
        *path, attribute = qualname.split(".")
        owner: Any = sys.modules.get(module)
        for part in path:
            owner = getattr(owner, part, None)
        if _is_instance_method(owner, attribute):
            raise _instance_method_error(qualname, owner)
    if module == "__main__":
        module = _main_module_name()
    return f"{module}:{qualname}"


_NO_CONVERSION = (inspect.Parameter.empty, Any, object)


@dataclass(frozen=True, slots=True)
class JobFunction:
    """A resolved job function, with what the worker precomputes once per function."""

    name: str
    func: Callable[..., Any]
    runner: Callable[..., Any]
    """The function's pipeline without its retry stage: the broker does the retrying."""
    is_async: bool
    retry: RetryPolicy | None
    has_breaker: bool
    has_saga: bool
    positional: tuple[tuple[str, Any], ...]
    var_positional: Any
    keywords: dict[str, Any]
    var_keyword: Any
    converts: bool
    modules: Mapping[str, ModuleType]
    """The worker's imported modules: where exception arguments' classes may come from."""

    def convert(
        self, args: list[Any], kwargs: dict[str, Any], exceptions: bool = False
    ) -> tuple[list[Any], dict[str, Any]]:
        """Arguments converted to the annotated types (JSON has no tuple, datetime, ...).

        With `exceptions` (the envelope says it holds some), each `ExceptionRecord` is
        rebuilt first, from builtins, naq-resilience or the worker's modules only.
        """
        if exceptions:
            args, kwargs = rebuild_exceptions(args, kwargs, self.modules, self.name)
        if not self.converts:
            return args, kwargs
        positional = self.positional
        out_args = list(args)
        for i, value in enumerate(args):
            name, hint = positional[i] if i < len(positional) else ("*args", self.var_positional)
            out_args[i] = self._one(name, hint, value)
        out_kwargs = dict(kwargs)
        for key, value in kwargs.items():
            hint = self.keywords.get(key, self.var_keyword)
            out_kwargs[key] = self._one(key, hint, value)
        return out_args, out_kwargs

    def _one(self, name: str, hint: Any, value: Any) -> Any:
        if hint in _NO_CONVERSION or type(value) is hint:
            return value
        try:
            return msgspec.convert(value, hint, strict=False)
        except (msgspec.ValidationError, TypeError, RecursionError) as exc:
            raise DataValidationError(
                f"argument {name!r} of {self.name} does not match its annotation "
                f"{getattr(hint, '__name__', hint)!s}: {exc} (got {_shown(value)})"
            ) from None


_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlist = _SHOWN.maxdict = 6
_SHOWN.maxlevel = 3


def _shown(value: Any) -> str:
    """The value as an error message may quote it: a 700 KB string is not repeated."""
    text = _SHOWN.repr(value)
    if isinstance(value, (str, bytes)) and len(value) > 80:
        text += f" ({len(value):,} {'characters' if isinstance(value, str) else 'bytes'})"
    return text


def _describe(
    name: str, func: Callable[..., Any], modules: Mapping[str, ModuleType]
) -> JobFunction:
    # A classmethod reached through its class is a bound method: its pipeline (and
    # retry policy) is on the function underneath, and `cls` is not a job argument.
    bound_to: object = None
    target = func
    if inspect.ismethod(func):
        bound_to, target = func.__self__, func.__func__
    pipeline = pipeline_of(target)
    stages = pipeline.stages if pipeline is not None else ()
    original = pipeline.func if pipeline is not None else target
    retry = next((s.policy for s in stages if isinstance(s, RetryStage)), None)
    try:
        hints = typing.get_type_hints(original)
    except Exception:  # unresolvable forward references: pass arguments through as sent
        hints = {}
    positional: list[tuple[str, Any]] = []
    keywords: dict[str, Any] = {}
    var_positional: Any = Any
    var_keyword: Any = Any
    params = list(inspect.signature(original).parameters.values())
    if bound_to is not None:
        params = params[1:]
    for param in params:
        hint = hints.get(param.name, Any)
        if param.kind is param.VAR_POSITIONAL:
            var_positional = hint
        elif param.kind is param.VAR_KEYWORD:
            var_keyword = hint
        else:
            if param.kind is not param.KEYWORD_ONLY:
                positional.append((param.name, hint))
            if param.kind is not param.POSITIONAL_ONLY:
                keywords[param.name] = hint
    hinted = [h for _, h in positional] + list(keywords.values()) + [var_positional, var_keyword]
    runner = rebuild_without(target, (RetryStage,))
    if bound_to is not None:
        runner = types.MethodType(runner, bound_to)
    return JobFunction(
        name=name,
        func=func,
        runner=runner,
        is_async=inspect.iscoroutinefunction(original),
        retry=retry,
        has_breaker=any(isinstance(s, BreakerStage) for s in stages),
        has_saga=any(isinstance(s, SagaStage) for s in stages),
        positional=tuple(positional),
        var_positional=var_positional,
        keywords=keywords,
        var_keyword=var_keyword,
        converts=any(h not in _NO_CONVERSION for h in hinted),
        modules=modules,
    )


class FunctionRegistry:
    """The functions one worker may run: those defined in the modules it imported.

    Only public names are found in the modules, and with `strict=True` only functions
    marked `@job`; functions passed to `register` are allowed whatever their name or
    mark, since registering one is as explicit as allowing gets.
    """

    def __init__(self, modules: Iterable[str] = (), *, strict: bool = False) -> None:
        self._modules: dict[str, ModuleType] = {}
        self._resolved: dict[str, JobFunction] = {}
        self._registered = 0
        self._strict = strict
        for module in modules:
            self.allow_module(module)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self._modules)

    @property
    def registered(self) -> int:
        """How many functions were registered explicitly (`register`)."""
        return self._registered

    @property
    def strict(self) -> bool:
        return self._strict

    def allow_module(self, module: str) -> None:
        """Import `module` (the worker's `--import`) and allow its functions."""
        if module not in self._modules:
            self._modules[module] = importlib.import_module(module)

    def register(self, func: Callable[..., Any], name: str | None = None) -> str:
        """Allow one function explicitly (for workers embedded in a program).

        Its name may be private and it need not be marked `@job`: naming a function
        here is the explicit choice those rules otherwise ask for.
        """
        key = name or _name_of(func)
        self._resolved[key] = _describe(key, func, self._modules)
        self._registered += 1
        return key

    def resolve(self, name: str) -> JobFunction:
        found = self._resolved.get(name)
        if found is not None:
            return found
        module_name, sep, qualname = name.partition(":")
        if not sep or not qualname:
            raise UnknownFunction(f"function name {name!r} is not of the form 'module:qualname'")
        module = self._modules.get(module_name)
        if module is None:
            # Before the private check: a module this worker does not import is not its
            # to judge (another worker may have registered even a private function of it).
            allowed = ", ".join(sorted(self._modules)) or "none"
            raise UnroutableJob(
                f"function {name} is not in a module this worker was told to import "
                f"(allowed: {allowed}); start the worker with --import {module_name} if it "
                "should run it",
                function=name, module=module_name, imported=False,
            )  # fmt: skip
        private = _private_part(qualname)
        if private is not None:
            # Checked before any attribute is looked up, so nothing private is touched.
            raise UnknownFunction(
                f"{name} is private ({private!r} starts with '_'): a worker runs a private "
                "function only when it was registered explicitly (FunctionRegistry.register, "
                "or Worker(functions=[...])); register it, or give it a public name"
            )
        target: Any = module
        owner: Any = None
        for part in qualname.split("."):
            owner, target = target, getattr(target, part, None)
            if target is None:
                raise UnroutableJob(
                    f"module {module_name} has no function {qualname} (in the version this "
                    "worker imported)",
                    function=name, module=module_name, imported=True,
                )  # fmt: skip
        if not callable(target) or isinstance(target, type):
            raise UnknownFunction(f"{name} is not a function")
        if _is_instance_method(owner, qualname.rsplit(".", 1)[-1]):
            raise UnknownFunction(str(_instance_method_error(name, owner)))
        pipeline = pipeline_of(getattr(target, "__func__", target))
        defined_in = getattr(pipeline.func if pipeline else target, "__module__", None)
        if defined_in != module_name and not (
            defined_in == "__main__" and getattr(module, "__name__", None) == module_name
        ):
            # `allowed_module:os.system` must not reach what the module merely imported.
            raise UnknownFunction(
                f"{name} is defined in {defined_in}, not in {module_name}; a job may only "
                "name functions defined in a module the worker imported"
            )
        if self._strict and not is_job(target):
            raise UnknownFunction(
                f"{name} is not marked as a job, and this worker is strict (--strict, "
                f"{STRICT_ENV}): it runs only functions decorated with @job (from "
                "naq_resilience import job) or registered explicitly; add @job to it"
            )
        described = _describe(name, target, self._modules)
        self._resolved[name] = described
        return described
