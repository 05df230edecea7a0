"""Which functions a job may name, how a worker finds them, and how it calls them.

No server: `function_name` is what the client writes into an envelope, and
`FunctionRegistry.resolve` is what the worker does with it. The job functions live
in tests/jobs_for_registry.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from naq_resilience import DataValidationError, NonRetryable, job, policies_of
from naq_resilience.jetstream.registry import (
    FunctionRegistry,
    UnknownFunction,
    UnroutableJob,
    function_name,
    strict_from_env,
)
from naq_resilience.policies.marker import is_job

import jobs_for_registry as jobs

ROOT = Path(__file__).resolve().parents[1]
MODULE = "jobs_for_registry"


@pytest.fixture
def registry() -> FunctionRegistry:
    return FunctionRegistry([MODULE])


# --------------------------------------------------------------------------- function_name


@pytest.mark.parametrize(
    ("func", "name"),
    [
        (jobs.plain, "plain"),
        (jobs.decorated, "decorated"),  # our pipeline: named after the function inside
        (jobs.foreign_decorated, "foreign_decorated"),  # functools.wraps: unwrapped
        (jobs.flaky_with_fallback, "flaky_with_fallback"),  # two stages, one wrapper
        (jobs.Mailer.render, "Mailer.render"),  # staticmethod
        (jobs.Mailer().render, "Mailer.render"),  # ... reached through an instance
        (jobs.Mailer.create, "Mailer.create"),  # classmethod
        (jobs.Mailer().create, "Mailer.create"),
        (jobs.Mailer.load, "Mailer.load"),  # a decorated classmethod
        (jobs.ping, "ping"),  # async
    ],
)
def test_function_name_is_module_colon_qualname(func: Any, name: str) -> None:
    assert function_name(func) == f"{MODULE}:{name}"


@pytest.mark.parametrize("func", [jobs.Mailer.send, jobs.Mailer().send])
def test_instance_methods_are_refused_naming_the_fix(func: Any) -> None:
    with pytest.raises(TypeError) as caught:
        function_name(func)
    message = str(caught.value)
    assert message.startswith("Mailer.send is an instance method")
    assert "@staticmethod or @classmethod of Mailer" in message


def test_a_class_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^Mailer is a class; enqueue a function$"):
        function_name(jobs.Mailer)


@pytest.mark.parametrize(
    ("func", "qualname"),
    [(lambda: None, "<lambda>"), (jobs.make_local(), "make_local.<locals>.local")],
)
def test_lambdas_and_nested_functions_are_refused(func: Any, qualname: str) -> None:
    with pytest.raises(TypeError) as caught:
        function_name(func)
    assert str(caught.value).startswith(f"{qualname} cannot be enqueued")
    assert "defined at module level" in str(caught.value)


def _run_python(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PRINTS_ITS_NAME = """\
from naq_resilience.jetstream.registry import function_name

def nightly(day: str) -> None:
    pass

print(function_name(nightly))
"""


def test_a_function_of_a_script_is_named_after_the_script_file(tmp_path: Path) -> None:
    (tmp_path / "nightly_report.py").write_text(PRINTS_ITS_NAME)
    done = _run_python(tmp_path, "nightly_report.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "nightly_report:nightly\n"


def test_a_function_of_a_module_run_with_dash_m_is_named_after_the_module(
    tmp_path: Path,
) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "__init__.py").write_text("")
    (tmp_path / "reports" / "nightly.py").write_text(PRINTS_ITS_NAME)
    done = _run_python(tmp_path, "-m", "reports.nightly")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "reports.nightly:nightly\n"


def test_a_function_typed_into_python_dash_c_is_refused(tmp_path: Path) -> None:
    done = _run_python(tmp_path, "-c", PRINTS_ITS_NAME)
    assert done.returncode == 1
    assert "ValueError: a function defined in an interactive session cannot be enqueued" in (
        done.stderr
    )


# --------------------------------------------------------------------------- resolve


def test_resolves_a_function_of_an_allowed_module_once(registry: FunctionRegistry) -> None:
    found = registry.resolve(f"{MODULE}:plain")
    assert found.func is jobs.plain
    assert found.name == f"{MODULE}:plain"
    assert not found.is_async
    assert found.retry is None
    assert registry.resolve(f"{MODULE}:plain") is found  # a dict hit from now on
    assert registry.modules == (MODULE,)


def test_resolves_what_function_name_wrote(registry: FunctionRegistry) -> None:
    for func in (jobs.decorated, jobs.foreign_decorated, jobs.Mailer.render, jobs.ping):
        assert registry.resolve(function_name(func)).func is func
    assert registry.resolve(f"{MODULE}:ping").is_async


def test_a_classmethod_runs_bound_to_its_class(registry: FunctionRegistry) -> None:
    found = registry.resolve(f"{MODULE}:Mailer.create")
    assert [name for name, _ in found.positional] == ["address"]  # `cls` is not an argument
    assert found.runner("ops@example.com") == "Mailer(ops@example.com)"
    assert found.func("ops@example.com") == "Mailer(ops@example.com)"


def test_a_module_not_allowed_is_refused_without_being_imported(
    registry: FunctionRegistry,
) -> None:
    name = "never_imported_for_registry"
    assert name not in sys.modules
    assert (Path(__file__).parent / f"{name}.py").exists()  # it could be imported
    with pytest.raises(UnknownFunction) as caught:
        registry.resolve(f"{name}:anything")
    assert caught.value.reason == (
        f"function {name}:anything is not in a module this worker was told to import "
        f"(allowed: {MODULE}); start the worker with --import {name} if it should run it"
    )
    assert name not in sys.modules


@pytest.mark.parametrize(
    ("name", "module", "imported"),
    [
        # Not a module this worker imports: another worker may (the module's name is all
        # there is to go by, so even a private name is not this worker's to judge).
        ("never_imported_for_registry:anything", "never_imported_for_registry", False),
        ("never_imported_for_registry:_helper", "never_imported_for_registry", False),
        ("billing.jobs:Invoices.send", "billing.jobs", False),
        # Its module is imported but has no such name here: another worker may run a
        # version of the module that has it (a rolling deploy).
        (f"{MODULE}:nope", MODULE, True),
        (f"{MODULE}:Mailer.nope", MODULE, True),
    ],
)
def test_what_another_worker_may_run_is_unroutable_here(
    registry: FunctionRegistry, name: str, module: str, imported: bool
) -> None:
    with pytest.raises(UnroutableJob) as caught:
        registry.resolve(name)
    assert (caught.value.function, caught.value.module, caught.value.imported) == (
        name, module, imported,
    )  # fmt: skip
    assert isinstance(caught.value, UnknownFunction)  # what callers caught before
    assert "never_imported_for_registry" not in sys.modules


@pytest.mark.parametrize(
    "qualname",
    ["Path", "LIMIT", "os.system", "Mailer.send", "_helper", "decorated.__wrapped__"],
)
def test_what_no_worker_importing_the_module_would_run_is_not_unroutable(
    registry: FunctionRegistry, qualname: str
) -> None:
    """Refused for what the name is, which every worker importing the module sees alike:
    dead-lettered at once, never handed around."""
    with pytest.raises(UnknownFunction) as caught:
        registry.resolve(f"{MODULE}:{qualname}")
    assert not isinstance(caught.value, UnroutableJob)


@pytest.mark.parametrize("name", ["plain", f"{MODULE}:", ""])
def test_a_malformed_name_is_not_unroutable(registry: FunctionRegistry, name: str) -> None:
    with pytest.raises(UnknownFunction) as caught:
        registry.resolve(name)
    assert not isinstance(caught.value, UnroutableJob)


def test_unroutable_job_is_named_for_the_wire_as_the_package_exports_it() -> None:
    import naq_resilience
    from naq_resilience.policies.pipeline import qualified_name

    assert naq_resilience.UnroutableJob is UnroutableJob
    assert qualified_name(UnroutableJob) == "naq_resilience:UnroutableJob"


@pytest.mark.parametrize(
    ("qualname", "reason"),
    [
        # What the allowed module merely imported, or reaches through an attribute:
        ("os.system", "is defined in posix, not in jobs_for_registry"),
        ("dumps", "is defined in json, not in jobs_for_registry"),
        ("Mailer.mro", "is defined in None, not in jobs_for_registry"),
        # Not a function at all:
        ("Path", "is not a function"),
        ("Mailer", "is not a function"),
        ("LIMIT", "is not a function"),
        ("nope", "has no function nope"),
        ("Mailer.send", "is an instance method"),
    ],
)
def test_only_functions_defined_in_the_allowed_module_are_reachable(
    registry: FunctionRegistry, qualname: str, reason: str
) -> None:
    with pytest.raises(UnknownFunction) as caught:
        registry.resolve(f"{MODULE}:{qualname}")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("qualname", "part"),
    [
        ("_helper", "_helper"),
        ("Mailer._private", "_private"),
        ("_Private.method", "_Private"),
        # Refused before any lookup, so no attribute path reaches past the module:
        ("__loader__.load_module", "__loader__"),
        ("__spec__.loader.exec_module", "__spec__"),
        ("plain.__call__", "__call__"),
        ("plain.__globals__", "__globals__"),
        # ... nor past a function's policies to the bare function inside them:
        ("decorated.__wrapped__", "__wrapped__"),
    ],
)
def test_a_private_name_is_refused_naming_the_fix(
    registry: FunctionRegistry, qualname: str, part: str
) -> None:
    with pytest.raises(UnknownFunction) as caught:
        registry.resolve(f"{MODULE}:{qualname}")
    assert caught.value.reason == (
        f"{MODULE}:{qualname} is private ({part!r} starts with '_'): a worker runs a private "
        "function only when it was registered explicitly (FunctionRegistry.register, or "
        "Worker(functions=[...])); register it, or give it a public name"
    )


@pytest.mark.parametrize(
    ("func", "qualname"),
    [(jobs._helper, "_helper"), (jobs._Private.method, "_Private.method")],
)
def test_a_private_function_registered_explicitly_runs(func: Any, qualname: str) -> None:
    registry = FunctionRegistry([MODULE])
    assert registry.register(func) == f"{MODULE}:{qualname}"
    assert registry.resolve(f"{MODULE}:{qualname}").func is func


@pytest.mark.parametrize(
    ("func", "qualname", "part"),
    [
        (jobs._helper, "_helper", "_helper"),
        (jobs.Mailer._private, "Mailer._private", "_private"),
        (jobs._Private.method, "_Private.method", "_Private"),
    ],
)
def test_enqueue_refuses_a_private_function_naming_the_fix(
    func: Any, qualname: str, part: str
) -> None:
    """A worker would dead-letter every such job unless it registered the function, which
    the client cannot know: refused at enqueue, where the mistake is made."""
    with pytest.raises(TypeError) as caught:
        function_name(func)
    assert str(caught.value) == (
        f"{qualname} cannot be enqueued: {part!r} starts with '_', so the name is private, "
        "and a worker refuses to run a private function unless it was registered on that "
        "worker explicitly (Worker(functions=[...])), which enqueue cannot check; give it "
        "a public name (not starting with '_') to enqueue it"
    )


@pytest.mark.parametrize("name", ["plain", f"{MODULE}:", f"{MODULE}.plain", ""])
def test_a_name_without_module_and_qualname_is_refused(
    registry: FunctionRegistry, name: str
) -> None:
    with pytest.raises(UnknownFunction, match="is not of the form 'module:qualname'"):
        registry.resolve(name)


def test_a_registered_function_needs_no_allowed_module() -> None:
    registry = FunctionRegistry()
    assert registry.register(jobs.plain) == f"{MODULE}:plain"
    assert registry.register(jobs.ping, name="pinger") == "pinger"
    assert registry.resolve(f"{MODULE}:plain").func is jobs.plain
    assert registry.resolve("pinger").is_async
    with pytest.raises(UnknownFunction, match=r"\(allowed: none\)"):
        registry.resolve(f"{MODULE}:decorated")


# --------------------------------------------------------------------------- arguments

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ISO = "2025-01-02T03:04:05Z"


def test_json_values_are_converted_to_the_annotations(registry: FunctionRegistry) -> None:
    typed = registry.resolve(f"{MODULE}:typed")
    args, kwargs = typed.convert(
        ["5", ISO, [1, 2], {"x": 1, "y": 2}, {"sku": "A-1"}],
        {"tags": ["eu", "b2b"]},
    )
    # strict=False: a numeric string becomes the int it spells (JSON from other
    # languages often quotes numbers); a float with a fraction never becomes an int.
    assert args == [5, WHEN, (1, 2), jobs.Point(1, 2), jobs.Item(sku="A-1", quantity=1)]
    assert kwargs == {"tags": frozenset({"eu", "b2b"})}
    assert typed.runner(*args, **kwargs)["when"] == WHEN


def test_variadic_parameters_convert_by_their_annotation(registry: FunctionRegistry) -> None:
    variadic = registry.resolve(f"{MODULE}:variadic")
    assert variadic.convert(["1.5", 2], {"retries": "3"}) == ([1.5, 2.0], {"retries": 3})
    with pytest.raises(DataValidationError, match=r"argument '\*args' of "):
        variadic.convert(["many"], {})
    with pytest.raises(DataValidationError, match=r"argument 'retries' of "):
        variadic.convert([], {"retries": "three"})


def test_positional_only_parameters_are_matched_by_position(registry: FunctionRegistry) -> None:
    found = registry.resolve(f"{MODULE}:positional_only")
    assert found.convert(["1", "2"], {}) == ([1, 2], {})
    assert found.convert(["1"], {"b": "2"}) == ([1], {"b": 2})
    # `a` cannot be passed by keyword: passed through as sent, the call itself refuses it.
    assert found.convert([], {"a": "1"}) == ([], {"a": "1"})


def test_unannotated_functions_get_their_arguments_untouched(registry: FunctionRegistry) -> None:
    untyped = registry.resolve(f"{MODULE}:untyped")
    args, kwargs = ["5"], {"b": [1]}
    assert not untyped.converts
    converted = untyped.convert(args, kwargs)
    assert converted[0] is args
    assert converted[1] is kwargs


@pytest.mark.parametrize(
    ("args", "kwargs", "argument", "detail"),
    [
        (["five", ISO, [1, 2], {"x": 1, "y": 2}, {"sku": "A"}], {}, "count", "int"),
        ([5.5, ISO, [1, 2], {"x": 1, "y": 2}, {"sku": "A"}], {}, "count", "int"),
        ([5, "soon", [1, 2], {"x": 1, "y": 2}, {"sku": "A"}], {}, "when", "datetime"),
        ([5, "2025-01-02", [1, 2], {"x": 1, "y": 2}, {"sku": "A"}], {}, "when", "RFC3339"),
        ([5, ISO, [1], {"x": 1, "y": 2}, {"sku": "A"}], {}, "pair", "length 2"),
        ([5, ISO, [1, 2], {"x": 1}, {"sku": "A"}], {}, "point", "field `y`"),
        ([5, ISO, [1, 2], {"x": 1, "y": 2}, {}], {}, "item", "field `sku`"),
        ([5, ISO, [1, 2], {"x": 1, "y": 2}, {"sku": "A"}], {"tags": 5}, "tags", ""),
    ],
)
def test_an_argument_that_does_not_convert_is_named(
    registry: FunctionRegistry,
    args: list[Any],
    kwargs: dict[str, Any],
    argument: str,
    detail: str,
) -> None:
    typed = registry.resolve(f"{MODULE}:typed")
    with pytest.raises(DataValidationError) as caught:
        typed.convert(args, kwargs)
    message = str(caught.value)
    assert message.startswith(f"argument {argument!r} of {MODULE}:typed does not match")
    assert detail in message
    assert isinstance(caught.value, NonRetryable)  # bad data: retrying cannot help


# --------------------------------------------------------------------------- the runner


def test_the_runner_leaves_retrying_to_the_broker(registry: FunctionRegistry) -> None:
    found = registry.resolve(f"{MODULE}:flaky_once")
    assert found.retry is not None
    assert found.retry.max_retries == 3
    jobs.FLAKY_CALLS.clear()
    with pytest.raises(ConnectionError, match="first call fails"):
        found.runner(1)
    assert jobs.FLAKY_CALLS == [1]  # raised, not retried in the worker's slot
    jobs.FLAKY_CALLS.clear()
    assert found.func(1) == 2  # called directly, the decorator retries in-process
    assert jobs.FLAKY_CALLS == [1, 1]


def test_the_runner_keeps_every_other_stage(registry: FunctionRegistry) -> None:
    found = registry.resolve(f"{MODULE}:flaky_with_fallback")
    assert found.retry is not None
    assert found.runner(1) == "fallback value"


def test_a_decorated_classmethod_keeps_its_retry_policy_for_the_broker(
    registry: FunctionRegistry,
) -> None:
    """Found while writing this test: through its class, a classmethod is a bound method
    that hid its pipeline, so the worker saw no @retry (one attempt) and its runner
    retried in-process, sleeping in a worker slot."""
    found = registry.resolve(f"{MODULE}:Mailer.load")
    assert found.retry is not None
    assert found.retry.max_retries == 2
    assert [name for name, _ in found.positional] == ["key"]
    jobs.LOAD_CALLS.clear()
    with pytest.raises(ConnectionError):
        found.runner(*found.convert(["7"], {})[0])
    assert jobs.LOAD_CALLS == [7]
    assert found.runner(7) == "Mailer[7]"


# --------------------------------------------------------------------------- @job, strict

MARKED = [
    "marked",
    "marked_async",
    "marked_under_retry",
    "marked_above_a_stack",
    "marked_between_stages",
    "marked_under_a_foreign_decorator",
    "Tasks.static_marked_outside",
    "Tasks.static_marked_inside",
    "Tasks.class_marked_outside",
    "Tasks.class_marked_inside",
]


@pytest.fixture
def strict() -> FunctionRegistry:
    return FunctionRegistry([MODULE], strict=True)


def test_registries_are_not_strict_unless_asked() -> None:
    assert not FunctionRegistry().strict
    assert FunctionRegistry(strict=True).strict


@pytest.mark.parametrize("qualname", MARKED)
def test_a_strict_registry_runs_marked_functions_however_stacked(
    strict: FunctionRegistry, qualname: str
) -> None:
    found = strict.resolve(f"{MODULE}:{qualname}")
    assert found.name == f"{MODULE}:{qualname}"
    assert function_name(found.func) == found.name


def test_marked_functions_keep_their_stages(strict: FunctionRegistry) -> None:
    assert strict.resolve(f"{MODULE}:marked_async").is_async
    stacked = strict.resolve(f"{MODULE}:marked_above_a_stack")
    assert stacked.retry is not None
    assert stacked.has_breaker
    between = strict.resolve(f"{MODULE}:marked_between_stages")
    assert between.is_async
    assert between.retry is not None
    assert asyncio.run(between.runner(1)) == "fallback value"
    classmethod_job = strict.resolve(f"{MODULE}:Tasks.class_marked_inside")
    assert classmethod_job.retry is not None
    assert classmethod_job.runner(3) == "Tasks(3)"


@pytest.mark.parametrize("qualname", ["plain", "decorated", "ping", "Mailer.render"])
def test_a_strict_registry_refuses_unmarked_functions_naming_job(
    strict: FunctionRegistry, qualname: str
) -> None:
    with pytest.raises(UnknownFunction) as caught:
        strict.resolve(f"{MODULE}:{qualname}")
    assert caught.value.reason == (
        f"{MODULE}:{qualname} is not marked as a job, and this worker is strict (--strict, "
        "NAQ_STRICT): it runs only functions decorated with @job (from naq_resilience "
        "import job) or registered explicitly; add @job to it"
    )
    assert not isinstance(caught.value, UnroutableJob)  # dead-lettered at once: fix the code


def test_a_strict_registry_runs_what_was_registered_explicitly(strict: FunctionRegistry) -> None:
    strict.register(jobs.plain)
    strict.register(jobs._helper)
    assert strict.resolve(f"{MODULE}:plain").func is jobs.plain
    assert strict.resolve(f"{MODULE}:_helper").func is jobs._helper


def test_strict_still_refuses_private_names(strict: FunctionRegistry) -> None:
    with pytest.raises(UnknownFunction, match=r"is private \('_Private' starts with '_'\)"):
        strict.resolve(f"{MODULE}:_Private.method")


def test_job_is_a_marker_not_a_wrapper() -> None:
    def bare(x: int) -> int:
        return x

    assert job(bare) is bare
    assert job()(bare) is bare
    assert is_job(bare)
    assert is_job(jobs.marked)
    assert not is_job(jobs.plain)
    assert policies_of(jobs.marked) == ()
    assert [type(p).__name__ for p in policies_of(jobs.marked_above_a_stack)] == [
        "RetryPolicy",
        "BreakerPolicy",
    ]


def test_job_keeps_static_and_class_method_objects() -> None:
    def inner(x: int) -> int:
        return x

    static = staticmethod(inner)
    assert job(static) is static
    assert is_job(static)
    assert is_job(jobs.Tasks.class_marked_outside)  # a bound method, through its class


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (jobs.Mailer, "@job marks a function (or a static or class method), got <class"),
        (42, "@job marks a function (or a static or class method), got 42"),
        (len, "@job cannot mark <built-in function len>: it takes no attributes"),
    ],
)
def test_job_refuses_what_it_cannot_mark(target: Any, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        job(target)
    assert str(caught.value).startswith(message)


def test_job_refuses_generator_functions() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"@job cannot mark generator function .*numbers"):
        job(numbers)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("No", False),
        ("1", True),
        ("true", True),
        (" YES ", True),
    ],
)
def test_strict_from_env(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("NAQ_STRICT", raising=False)
    else:
        monkeypatch.setenv("NAQ_STRICT", value)
    assert strict_from_env() is expected


def test_strict_from_env_refuses_a_value_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_STRICT", "maybe")
    with pytest.raises(ValueError, match=r"^NAQ_STRICT='maybe' is neither") as caught:
        strict_from_env()
    assert str(caught.value) == (
        "NAQ_STRICT='maybe' is neither yes nor no: set it to 1, true or yes to run only "
        "functions marked @job, or to 0, false or no (or unset it) to run every public "
        "function of the imported modules"
    )
