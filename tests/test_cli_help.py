"""Every `naq` argument says what it is for and what it defaults to."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from naq_resilience import cli

_NO_DEFAULT_TO_SAY = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _parsers(
    parser: argparse.ArgumentParser, path: str = "naq"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _arguments() -> list[tuple[str, argparse.Action]]:
    found = []
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if not isinstance(action, _NO_DEFAULT_TO_SAY):
                found.append((path, action))
    return found


@pytest.mark.parametrize(
    ("path", "action"), _arguments(), ids=lambda x: x if isinstance(x, str) else x.dest
)
def test_every_argument_has_help_with_its_default(path: str, action: argparse.Action) -> None:
    name = "/".join(action.option_strings) or action.dest
    assert action.help, f"`{path} {name}` has no help text"
    flag = isinstance(
        action,
        (
            argparse._StoreTrueAction,
            argparse._StoreFalseAction,
            argparse._StoreConstAction,
            argparse._AppendConstAction,
        ),
    )
    if flag or action.default in (None, [], argparse.SUPPRESS) or action.required:
        return
    assert "default" in action.help, (
        f"`{path} {name}` does not say its default ({action.default!r})"
    )
