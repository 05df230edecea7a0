"""Exceptions as job arguments: sent as `ExceptionRecord`s, rebuilt by the worker.

NAQ's guide enqueues `error_prone_job(scenario=..., error=TimeoutError("Network
timeout"))`. JSON has no exceptions and pickle is never used, so an exception travels
as a record of its type (`module:qualname`) and `args`, and the worker calls
`type(*args)`, under the same rule as for functions: nothing a message names is
imported. A worker rebuilds builtin exceptions, naq-resilience's own, and those
defined in a module it imports (`--import`); any other record fails the job as a
non-retryable `DataValidationError`.

Neither side pays anything for jobs without exceptions. The client encodes an envelope
with the plain encoder first; only when that fails (an argument it cannot encode) does
it encode again with `enc_hook`, which msgspec calls for nothing but the values it does
not support, and mark the envelope `exceptions`. The worker walks the arguments only
for an envelope so marked. Everything that can be checked at enqueue is: the class is
reachable by its name, it is rebuilt from its `args` there and then (so a class whose
`__init__` wants more, or whose other attributes would be lost, is refused where the
mistake is made), and its `args` are plain data.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import msgspec

from naq_resilience.codec import Format, UnsendableValue, encode_job_arguments
from naq_resilience.models import EXCEPTION_TAG, EXCEPTION_TAG_FIELD, ExceptionRecord
from naq_resilience.policies.errors import DataValidationError

__all__ = [
    "encode_job_arguments_with_exceptions",
    "encode_with_exceptions",
    "exception_record",
    "main_module_name",
    "rebuild_exceptions",
]

_LIBRARY = "naq_resilience"


def main_module_name() -> str | None:
    """The importable name of `__main__` (the script's file name, or the module run with
    `python -m`); None in an interactive session, where nothing is importable."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name)  # run with `python -m package.module`
    path = getattr(main, "__file__", None)
    if path:
        return str(os.path.splitext(os.path.basename(path))[0])
    return None


def _private_part(qualname: str) -> str | None:
    return next((part for part in qualname.split(".") if part.startswith("_")), None)


def _type_name(cls: type[BaseException]) -> str:
    """`module:qualname` of an exception class a worker could find by that name."""
    module, qualname = cls.__module__, cls.__qualname__
    shown = f"{module}.{qualname}" if module != "builtins" else qualname
    if "<locals>" in qualname:
        raise UnsendableValue(
            f"{shown} is defined inside a function, so no worker can rebuild it; define "
            "the exception class at module level"
        )
    private = _private_part(qualname)
    if private is not None:
        raise UnsendableValue(
            f"{shown} is private ({private!r} starts with '_'), and a worker rebuilds only "
            "public exception classes; give it a public name"
        )
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not cls:
        raise UnsendableValue(
            f"{shown} cannot be found by its name {module}:{qualname}, so no worker can "
            "rebuild it; raise and pass a class defined at module level under its own name"
        )
    if module == "__main__":
        script = main_module_name()
        if script is None:
            raise UnsendableValue(
                f"{qualname} is defined in an interactive session, so no worker can rebuild "
                "it; define it in a module the worker imports"
            )
        module = script
    return f"{module}:{qualname}"


def _public_attributes(exc: BaseException) -> dict[str, Any]:
    return {k: v for k, v in getattr(exc, "__dict__", {}).items() if not k.startswith("_")}


def exception_record(exc: BaseException) -> ExceptionRecord:
    """The record an exception argument travels as, or `UnsendableValue` saying why not.

    The class is rebuilt from `args` here, as the worker will: a class whose `__init__`
    does not take its own `args` back, or whose public attributes it would not restore
    (`RateLimitError("slow", retry_after=3)` keeps `retry_after` outside `args`), is
    refused now rather than failing or changing in the worker.
    """
    cls = type(exc)
    name = _type_name(cls)
    shown = f"{cls.__qualname__}({', '.join(map(repr, exc.args))})"
    try:
        _json.encode(list(exc.args))
    except UnsendableValue:
        raise
    except (TypeError, msgspec.EncodeError, OverflowError, RecursionError) as error:
        raise UnsendableValue(
            f"{shown} has arguments that are not plain data ({error}); an exception travels "
            "as its class and its args, which must be str, int, float, bool, None, list, "
            "dict or exceptions themselves"
        ) from None
    try:
        rebuilt = cls(*exc.args)
    except Exception as error:
        raise UnsendableValue(
            f"{shown} cannot be rebuilt as {cls.__qualname__}(*args) "
            f"({type(error).__name__}: {error}), which is how a worker rebuilds an "
            "exception argument; pass an exception whose class takes its own args back, "
            "or pass the values it holds as arguments of their own"
        ) from None
    ours, theirs = _public_attributes(exc), _public_attributes(rebuilt)
    lost = [k for k in ours if k not in theirs or theirs[k] != ours[k]]
    if lost:
        values = ", ".join(f"{k}={ours[k]!r}" for k in lost)
        raise UnsendableValue(
            f"{shown} has {values}, which {cls.__qualname__}(*args) would not restore: "
            "only an exception's class and args travel. Pass those values as arguments "
            "of their own"
        )
    return ExceptionRecord(type=name, args=list(exc.args))


def _enc_hook(value: Any) -> Any:
    if isinstance(value, BaseException):
        return exception_record(value)
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")


_json = msgspec.json.Encoder(enc_hook=_enc_hook)
_msgpack = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def encode_with_exceptions(obj: Any, fmt: Format = "json") -> bytes:
    """`codec.encode`, with every exception inside `obj` written as its record."""
    return _json.encode(obj) if fmt == "json" else _msgpack.encode(obj)


def encode_job_arguments_with_exceptions(
    function: str, args: Any, kwargs: Mapping[str, Any], fmt: Format = "json"
) -> None:
    """`codec.encode_job_arguments`, exceptions allowed: names the argument that fails."""
    encode_job_arguments(function, args, kwargs, fmt, enc_hook=_enc_hook)


# --------------------------------------------------------------------------- the worker's side


def rebuild_exceptions(
    args: list[Any], kwargs: dict[str, Any], modules: Mapping[str, ModuleType], function: str
) -> tuple[list[Any], dict[str, Any]]:
    """The arguments with every `ExceptionRecord` rebuilt as its exception.

    `modules` are the worker's `--import` modules: with builtins and naq-resilience's
    own, the only places a class is looked up; nothing is imported. A record that
    cannot be rebuilt raises `DataValidationError` (non-retryable: the message will not
    change), naming the argument.
    """
    rebuilder = _Rebuilder(modules, function)
    try:
        return (
            [rebuilder.value(v, f"positional argument {i}") for i, v in enumerate(args)],
            {k: rebuilder.value(v, f"argument {k!r}") for k, v in kwargs.items()},
        )
    except RecursionError:
        raise DataValidationError(
            f"the arguments of {function} are nested too deep to rebuild their exceptions"
        ) from None


class _Rebuilder:
    def __init__(self, modules: Mapping[str, ModuleType], function: str) -> None:
        self.modules = modules
        self.function = function

    def value(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            if value.get(EXCEPTION_TAG_FIELD) == EXCEPTION_TAG:
                return self.exception(value, where)
            return {k: self.value(v, where) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, where) for v in value]
        return value

    def _refuse(self, where: str, why: str) -> DataValidationError:
        return DataValidationError(f"{where} of {self.function} is an exception that {why}")

    def exception(self, data: dict[str, Any], where: str) -> BaseException:
        try:
            record = msgspec.convert(data, ExceptionRecord)
        except msgspec.ValidationError as error:
            raise self._refuse(where, f"is not a valid ExceptionRecord: {error}") from None
        if record.version != 1:
            raise self._refuse(
                where,
                f"comes as an ExceptionRecord of version {record.version}, which this worker "
                "does not read (it reads version 1); upgrade naq-resilience on the workers",
            )
        cls = self.exception_class(record.type, where)
        args = [self.value(v, where) for v in record.args]
        try:
            return cls(*args)
        except Exception as error:
            raise self._refuse(
                where,
                f"cannot be rebuilt as {record.type}(*args) ({type(error).__name__}: {error})",
            ) from None

    def exception_class(self, name: str, where: str) -> type[BaseException]:
        module_name, sep, qualname = name.partition(":")
        if not sep or not module_name or not qualname:
            raise self._refuse(where, f"names its type {name!r}, not as 'module:qualname'")
        private = _private_part(qualname)
        if private is not None:
            raise self._refuse(where, f"names the private type {name} ({private!r})")
        module: Any
        if module_name == "builtins":
            module = builtins
        elif module_name == _LIBRARY or module_name.startswith(f"{_LIBRARY}."):
            module = sys.modules.get(module_name)
        else:
            module = self.modules.get(module_name)
        if module is None:
            allowed = ", ".join(sorted(self.modules)) or "none"
            raise self._refuse(
                where,
                f"is of type {name}, from a module this worker did not import; it rebuilds "
                "builtin exceptions, naq_resilience's, and those defined in its --import "
                f"modules (here: {allowed}). Start the worker with --import {module_name} "
                "if it should accept them",
            )
        target: Any = module
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if (
            not isinstance(target, type)
            or not issubclass(target, BaseException)
            or target.__module__ != module_name
        ):
            raise self._refuse(
                where, f"is of type {name}, which is not an exception class defined there"
            )
        return target
