"""Does an enqueued call fit its function? Checked at enqueue, where the function is.

Every keyword `enqueue` does not know goes to the job function, as in NAQ, so
`enqueue_sync(f, x, max_retry=5)` used to reach a worker and fail there with a
`TypeError`, far from the typo. The client holds the function, so it binds the call to
the function's signature (the original one, under any of our decorators: the
pipeline's wrapper sets `__wrapped__`) and refuses a call that does not fit, naming
the enqueue option or the parameter the keyword probably meant.

`inspect.Signature.bind` costs 4 to 7 us a call here, a tenth of an enqueue, so each
function's signature is reduced once to a `CallShape` whose check is a few set and
length tests; `bind` runs only to explain a call the shape refused. A function that
takes `**kwargs` accepts any keyword, and one whose signature cannot be read (a
builtin) is not checked.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["CallShape", "call_shape", "check_call"]

_EMPTY = inspect.Parameter.empty
_SHAPES_LIMIT = 4096


class CallShape:
    """What calls a function accepts, reduced for a quick check."""

    __slots__ = (
        "_keywords",
        "_max_positional",
        "_positional",
        "_quick",
        "_required",
        "_var_keyword",
        "qualname",
        "signature",
    )

    def __init__(self, signature: inspect.Signature, qualname: str) -> None:
        self.signature = signature
        self.qualname = qualname
        params = list(signature.parameters.values())
        kinds = {p.kind for p in params}
        positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        self._positional = tuple(p.name for p in positional)
        self._max_positional = (
            sys.maxsize if inspect.Parameter.VAR_POSITIONAL in kinds else len(positional)
        )
        self._var_keyword = inspect.Parameter.VAR_KEYWORD in kinds
        self._keywords = frozenset(
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        required = [(i, p.name) for i, p in enumerate(positional) if p.default is _EMPTY]
        required += [
            (sys.maxsize, p.name)
            for p in params
            if p.kind is p.KEYWORD_ONLY and p.default is _EMPTY
        ]
        self._required = tuple(required)
        # Positional-only parameters are rare in job functions; `bind` judges those calls.
        self._quick = inspect.Parameter.POSITIONAL_ONLY not in kinds

    def fits(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
        """True when the call surely binds; False when `bind` must judge it."""
        if not self._quick:
            return False
        n = len(args)
        if n > self._max_positional:
            return False
        if kwargs:
            keys = kwargs.keys()
            if not self._var_keyword and not keys <= self._keywords:
                return False
            if n and not keys.isdisjoint(self._positional[:n]):
                return False
        # A loop, not all(...): a generator costs more than the check, on every enqueue.
        for index, name in self._required:  # noqa: SIM110
            if index >= n and name not in kwargs:
                return False
        return True

    def check(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], options: Sequence[str]
    ) -> None:
        """Raise `TypeError` naming the problem unless the call binds."""
        if self.fits(args, kwargs):
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(self._explain(name, kwargs, options, str(error))) from None

    def _explain(
        self, name: str, kwargs: Mapping[str, Any], options: Sequence[str], why: str
    ) -> str:
        bare = self.signature.replace(
            parameters=[p.replace(annotation=_EMPTY) for p in self.signature.parameters.values()],
            return_annotation=_EMPTY,
        )
        where = f"cannot enqueue {name}: {self.qualname}{bare}"
        unknown = [] if self._var_keyword else [k for k in kwargs if k not in self._keywords]
        if not unknown:
            # A parameter named like an option (`timeout`) never reaches the function
            # by keyword: enqueue keeps it.
            taken = [p for p in self.signature.parameters if p in options and p not in kwargs]
            hint = (
                f" ({', '.join(taken)}: an enqueue option of the same name is kept by "
                "enqueue, so pass the function's own positionally)"
                if taken
                else ""
            )
            return (
                f"{where} cannot be called with these arguments ({why}){hint}, so a worker "
                "would fail the job with TypeError; nothing was enqueued"
            )
        keyword = unknown[0]
        parameters = [p for p in self.signature.parameters if p in self._keywords]
        matches = difflib.get_close_matches(keyword, [*options, *parameters], n=1)
        match = matches[0] if matches else None
        if match is None:
            hint = (
                f"; it is neither one of its parameters nor an enqueue option "
                f"({', '.join(options)})"
            )
        elif match in options:
            hint = f"; did you mean the enqueue option {match}=?"
        else:
            hint = f"; did you mean its parameter {match}=?"
        return (
            f"{where} takes no keyword argument {keyword!r} (every keyword that is not an "
            f"enqueue option goes to the function){hint} Nothing was enqueued"
        )


_shapes: dict[Any, CallShape | None] = {}


def call_shape(func: Callable[..., Any]) -> CallShape | None:
    """`func`'s shape, computed once per function; None when it cannot be read."""
    try:
        return _shapes[func]
    except KeyError:
        pass
    except TypeError:  # unhashable: not cached, still checked
        return _shape(func)
    shape = _shape(func)
    if len(_shapes) >= _SHAPES_LIMIT:
        _shapes.clear()
    _shapes[func] = shape
    return shape


def _shape(func: Callable[..., Any]) -> CallShape | None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    qualname = getattr(inspect.unwrap(func), "__qualname__", None) or repr(func)
    return CallShape(signature, str(qualname))


def check_call(
    func: Callable[..., Any],
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Sequence[str],
) -> None:
    """Refuse, with a `TypeError` naming the likely fix, a call that does not fit `func`."""
    shape = call_shape(func)
    if shape is not None:
        shape.check(name, args, kwargs, options)
