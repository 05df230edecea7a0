"""Where a worker's job modules come from: `--import`, `NAQ_IMPORTS`, `[tool.naq]`.

A worker runs only functions of the modules it is told to import, so NAQ's plain
`naq worker default` would run no job (it hands each back for another worker, and it
ends as an unroutable dead letter). Rather than give up the allow-list,
a project names its job modules once, in its pyproject.toml:

    [tool.naq]
    imports = ["myapp.jobs", "myapp.reports"]

found, as linters and test runners find their settings, in the nearest pyproject.toml
from the working directory up (not past a directory holding `.git`, the top of a
repository). The modules of all three sources are merged, in that order, without
repeats, and the worker says at start where each came from.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "IMPORTS_ENV",
    "NO_MODULES_WARNING",
    "ImportSources",
    "find_pyproject",
    "import_sources",
    "project_imports",
]

IMPORTS_ENV = "NAQ_IMPORTS"
_KEYS = ("imports",)
_EXAMPLE = '[tool.naq]\nimports = ["myapp.jobs"]'


@dataclass(frozen=True)
class ImportSources:
    """The worker's job modules and where each group came from, in order."""

    modules: tuple[str, ...] = ()
    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(where, modules) for each source that named any: "--import", "NAQ_IMPORTS",
    or the pyproject.toml's path with "[tool.naq]"."""
    pyproject: Path | None = field(default=None)
    """The pyproject.toml whose `[tool.naq]` named modules, if one did."""

    def describe(self) -> str:
        """One line for the worker's start-up log."""
        if not self.sources:
            return "none"
        return "; ".join(f"{', '.join(mods)} (from {where})" for where, mods in self.sources)


NO_MODULES_WARNING = (
    "this worker has no job modules: no --import, no NAQ_IMPORTS, and no [tool.naq] "
    "imports in a pyproject.toml, so it runs no job: every job it takes is handed back "
    "for another worker, and dead-lettered as unroutable when no worker runs it. Name "
    "the modules that define your jobs: `naq worker --import myapp.jobs`, "
    "NAQ_IMPORTS=myapp.jobs, or in pyproject.toml\n" + _EXAMPLE
)
"""What a worker says at start when nothing names a module (and no function was given)."""


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml from `start` (the working directory) up, if any.

    The search stops at a directory holding `.git`: a pyproject.toml above the
    repository belongs to some other project.
    """
    directory = (start or Path.cwd()).resolve()
    for candidate in (directory, *directory.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            return path
        if (candidate / ".git").exists():
            return None
    return None


def project_imports(path: Path) -> tuple[str, ...]:
    """The modules `[tool.naq] imports` names in `path`, or a `ValueError` naming the fix."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML ({error}); fix it or its [tool.naq]") from None
    tool = data.get("tool", {})
    section = tool.get("naq") if isinstance(tool, dict) else None
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise ValueError(f"[tool.naq] in {path} must be a table, like\n{_EXAMPLE}")
    for key in section:
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"[tool.naq] in {path} has an unknown key {key!r}; {hint}it takes "
                f"{', '.join(_KEYS)}, e.g.\n{_EXAMPLE}"
            )
    imports = section.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(m, str) and m.strip() for m in imports):
        raise ValueError(
            f"[tool.naq] imports in {path} must be a list of module names, like\n{_EXAMPLE}\n"
            f"got {imports!r}"
        )
    return tuple(m.strip() for m in imports)


def import_sources(explicit: Iterable[str] = (), start: Path | None = None) -> ImportSources:
    """`explicit` modules (the worker's `imports=`, the CLI's `--import`), then
    `NAQ_IMPORTS` (a comma list), then the nearest pyproject.toml's `[tool.naq]`."""
    groups: list[tuple[str, tuple[str, ...]]] = []
    given = tuple(m for m in explicit)
    if given:
        groups.append(("--import", given))
    env = tuple(m.strip() for m in os.environ.get(IMPORTS_ENV, "").split(",") if m.strip())
    if env:
        groups.append((IMPORTS_ENV, env))
    pyproject = find_pyproject(start)
    found = project_imports(pyproject) if pyproject is not None else ()
    if found:
        groups.append((f"{pyproject} [tool.naq]", found))
    for where, mods in groups:
        for module in mods:
            _check_module_name(module, where)
    modules = tuple(dict.fromkeys(m for _, mods in groups for m in mods))
    return ImportSources(modules, tuple(groups), pyproject if found else None)


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _check_module_name(module: str, where: str) -> None:
    """A module name, as `import` takes it: a file path is the likeliest slip."""
    if _MODULE.match(module):
        return
    path = module.removeprefix("./").removesuffix(".py").replace("/", ".").replace("\\", ".")
    hint = (
        f"write {path!r} (run from the folder that holds it, or from the project's root)"
        if _MODULE.match(path)
        else "write a dotted module name such as 'myapp.jobs'"
    )
    raise ValueError(f"{where} takes module names, not files or paths: got {module!r}; {hint}")
