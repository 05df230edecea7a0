"""A project names its job modules once: `[tool.naq] imports` in its pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from naq_resilience import Worker
from naq_resilience.jetstream.project import (
    NO_MODULES_WARNING,
    ImportSources,
    find_pyproject,
    import_sources,
    project_imports,
)

from conftest import ROOT

OFFLINE = "nats://127.0.0.1:9"


def project(tmp_path: Path, toml: str) -> Path:
    (tmp_path / ".git").mkdir(parents=True)  # the top of the project: the search stops here
    (tmp_path / "pyproject.toml").write_text(toml)
    return tmp_path


def test_the_nearest_pyproject_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    root = project(tmp_path, "[project]\nname = 'x'\n")
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_pyproject(deep) == root / "pyproject.toml"
    (deep / "pyproject.toml").write_text("")
    assert find_pyproject(deep) == deep / "pyproject.toml"


def test_the_search_stops_at_the_top_of_the_repository(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.naq]\nimports = ["elsewhere"]\n')
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    assert find_pyproject(repo) is None


def test_imports_are_read_from_tool_naq(tmp_path: Path) -> None:
    path = project(tmp_path, '[tool.naq]\nimports = ["myapp.jobs", " myapp.reports "]\n')
    assert project_imports(path / "pyproject.toml") == ("myapp.jobs", "myapp.reports")
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert project_imports(path / "pyproject.toml") == ()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[tool.naq\n", r"pyproject.toml is not valid TOML \("),
        ('[tool.naq]\nimport = ["a"]\n', r"has an unknown key 'import'; did you mean 'imports'\?"),
        ('[tool.naq]\nimports = "a.jobs"\n', r"imports in .* must be a list of module names"),
        ("[tool.naq]\nimports = [1]\n", r"must be a list of module names"),
        ('[tool]\nnaq = "a"\n', r"\[tool.naq\] in .* must be a table"),
    ],
)
def test_a_bad_section_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = project(tmp_path, toml) / "pyproject.toml"
    with pytest.raises(ValueError, match=message) as caught:
        project_imports(path)
    assert str(path) in str(caught.value)


def test_sources_merge_in_order_without_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, '[tool.naq]\nimports = ["c", "a"]\n')
    monkeypatch.setenv("NAQ_IMPORTS", "b, a,")
    sources = import_sources(["a"], start=root)
    assert sources.modules == ("a", "b", "c")
    assert sources.pyproject == root / "pyproject.toml"
    assert sources.describe() == (
        f"a (from --import); b, a (from NAQ_IMPORTS); c, a (from {root}/pyproject.toml [tool.naq])"
    )
    monkeypatch.delenv("NAQ_IMPORTS")
    bare = project(tmp_path / "bare", "[project]\nname = 'bare'\n")
    assert import_sources([], start=bare) == ImportSources()  # nothing, from nowhere
    assert import_sources([], start=bare).describe() == "none"


def test_a_worker_imports_the_projects_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, '[tool.naq]\nimports = ["project_jobs_for_tests"]\n')
    (root / "project_jobs_for_tests.py").write_text("def hello() -> str:\n    return 'hi'\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(root)
    monkeypatch.delenv("NAQ_IMPORTS", raising=False)
    worker = Worker("default", nats_url=OFFLINE)
    assert worker.registry.modules == ("project_jobs_for_tests",)
    assert worker.registry.resolve("project_jobs_for_tests:hello").func() == "hi"
    assert worker.has_jobs


def test_a_worker_without_modules_knows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project(tmp_path, "[project]\nname = 'x'\n"))
    monkeypatch.delenv("NAQ_IMPORTS", raising=False)
    assert not Worker("default", nats_url=OFFLINE).has_jobs
    assert Worker("default", nats_url=OFFLINE, functions=[len]).has_jobs


def test_naq_worker_without_modules_says_it_runs_no_job(tmp_path: Path) -> None:
    root = project(tmp_path, "[project]\nname = 'x'\n")
    env = {k: v for k, v in os.environ.items() if k != "NAQ_IMPORTS"}
    done = subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "worker", "--nats-url", OFFLINE],
        cwd=root, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1  # nothing listens there
    assert f"naq worker: warning: {NO_MODULES_WARNING}" in done.stderr
    assert "it runs no job: every job it takes is handed back" in NO_MODULES_WARNING
    assert '[tool.naq]\nimports = ["myapp.jobs"]' in NO_MODULES_WARNING


def test_naq_worker_refuses_a_bad_tool_naq_at_start(tmp_path: Path) -> None:
    root = project(tmp_path, '[tool.naq]\nmodules = ["a"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "worker", "--nats-url", OFFLINE],
        cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"naq worker: [tool.naq] in {root}/pyproject.toml has an unknown")


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("./jobs.py", "write 'jobs'"),
        ("myapp/tasks.py", "write 'myapp.tasks'"),
        ("my-app", "dotted"),
    ],
)
def test_a_path_given_as_a_module_says_what_to_write(given: str, hint: str) -> None:
    with pytest.raises(ValueError, match="takes module names, not files or paths") as caught:
        import_sources([given])
    assert hint in str(caught.value)


def test_naq_worker_with_a_file_for_import_is_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "worker", "--import", "./jobs.py",
         "--nats-url", OFFLINE],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "naq worker: --import takes module names, not files or paths: got './jobs.py'; "
        "write 'jobs' (run from the folder that holds it, or from the project's root)"
    ]
