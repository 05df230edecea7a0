from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import naq_resilience
from naq_resilience.policies import retry
from naq_resilience.policies.chaos import ChaosSwitch, chaos
from naq_resilience.testing.pytest_plugin import DEFAULT_SEED, ChaosController

pytest_plugins = ["pytester"]

ROOT = Path(naq_resilience.__file__).resolve().parents[1]
MODULE = "naq_resilience.testing.pytest_plugin"
# Load the plugin by module name, and block an entry point of the same plugin under a
# short name, so these runs register it exactly once however it gets installed.
PLUGIN = ("-p", "no:naq_resilience", "-p", MODULE)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NAQ_CHAOS", raising=False)
    monkeypatch.delenv("NAQ_CHAOS_SEED", raising=False)
    saved, testing = chaos.current(), retry.is_testing()
    chaos.disable()
    retry.set_testing(False)
    yield
    chaos.restore(saved)
    retry.set_testing(testing)


# Hypothesis' plugin imports hypothesis at session end, and each in-process run forgets
# the modules it imported, so it would cost seconds per run.
QUIET = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:hypothesispytest",
    "-W",
    "ignore:Module already imported:pytest.PytestAssertRewriteWarning",
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, *QUIET, *args)


# --------------------------------------------------------------------------- marker


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.chaos(names=None, failure_rate=None, *"])


def test_marker_switches_chaos_on_for_the_test_body_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from naq_resilience.policies.chaos import ChaosSwitch, chaos

        @pytest.fixture
        def during_setup():
            return chaos.current()

        @pytest.mark.chaos(failure_rate=1.0, names="svc:a")
        def test_on(during_setup):
            assert during_setup is None
            assert chaos.current() == ChaosSwitch(
                names=frozenset({"svc:a"}), failure_rate=1.0, seed=0
            )

        def test_off_again():
            assert chaos.current() is None

        @pytest.mark.chaos(seed=5)
        def test_explicit_seed():
            assert chaos.current() == ChaosSwitch(seed=5)

        @pytest.mark.chaos
        def test_bare_marker():
            assert chaos.current() == ChaosSwitch(seed=0)

        @pytest.mark.chaos(latency_rate=0.5)
        class TestClassMarker:
            def test_inherits(self):
                assert chaos.current() == ChaosSwitch(latency_rate=0.5, seed=0)

            @pytest.mark.chaos(failure_rate=0.25)
            def test_closest_wins(self):
                assert chaos.current() == ChaosSwitch(failure_rate=0.25, seed=0)
        """
    )
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(passed=6)
    assert chaos.current() is None


def test_marker_injects_faults_and_restores_after_a_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from naq_resilience.policies.chaos import chaos, is_injected

        @chaos(failure_rate=1.0)
        def send():
            return "sent"

        @pytest.mark.chaos
        def test_fault_is_injected():
            with pytest.raises(ConnectionError) as caught:
                send()
            assert is_injected(caught.value)

        @pytest.mark.chaos
        def test_fails_while_on():
            send()

        def test_next_test_is_clean():
            assert send() == "sent"
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*chaos: injected ConnectionError into *send*"])


def test_default_seed_is_overridden_by_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from naq_resilience.policies.chaos import chaos

        @pytest.mark.chaos
        def test_seed():
            assert chaos.current().seed == 77
        """
    )
    run(pytester, "--chaos-seed=77").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("chaos(0.5)", "*keyword arguments only*failure_rate=0.5*"),
        ("chaos(rate=1)", "*unknown argument(s) rate; it takes names, failure_rate*"),
        ("chaos(failure_rate=5)", "*@pytest.mark.chaos: failure_rate must be between 0 and 1*"),
        ("chaos(names=[])", "*@pytest.mark.chaos: names is empty*"),
    ],
)
def test_marker_argument_errors_fail_the_test(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    assert chaos.current() is None


# --------------------------------------------------------------------------- seed option


def test_header_reports_the_default_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester)
    result.stdout.fnmatch_lines(
        [
            f"naq-resilience chaos: seed {DEFAULT_SEED} (replay with "
            f"--chaos-seed={DEFAULT_SEED}); switch off outside chaos-marked tests"
        ]
    )


def test_random_seed_is_reported_and_replays_the_same_faults(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from naq_resilience.policies.chaos import chaos

        @chaos(failure_rate=0.5, name="flaky")
        def flaky():
            return "ok"

        def draws():
            seen = []
            for _ in range(32):
                try:
                    seen.append(flaky())
                except ConnectionError:
                    seen.append("fault")
            return seen

        @pytest.mark.chaos
        def test_record():
            print("DRAWS", "".join("F" if d == "fault" else "." for d in draws()))
        """
    )
    first = run(pytester, "--chaos-seed=random", "-s")
    first.assert_outcomes(passed=1)
    header = re.search(r"naq-resilience chaos: seed (\d+) ", first.stdout.str())
    draws = re.search(r"DRAWS ([F.]+)", first.stdout.str())
    assert header is not None
    assert draws is not None
    again = run(pytester, f"--chaos-seed={header.group(1)}", "-s")
    assert f"DRAWS {draws.group(1)}" in again.stdout.str()


def test_bad_seed_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--chaos-seed=often")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--chaos-seed must be a whole number or 'random', got 'often'*"])


def test_an_unseeded_environment_switch_gets_the_session_seed(pytester: pytest.Pytester) -> None:
    chaos.enable(names="svc:a")
    pytester.makepyfile(
        """
        from naq_resilience.policies.chaos import ChaosSwitch, chaos

        def test_seeded():
            assert chaos.current() == ChaosSwitch(names=frozenset({"svc:a"}), seed=9)
        """
    )
    result = run(pytester, "--chaos-seed=9")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*switch on for svc:a (NAQ_CHAOS), seed 9"])
    assert chaos.current() == ChaosSwitch(names=frozenset({"svc:a"}))


def test_a_seeded_environment_switch_keeps_its_seed(pytester: pytest.Pytester) -> None:
    chaos.enable(seed=3)
    pytester.makepyfile(
        """
        from naq_resilience.policies.chaos import chaos

        def test_seeded():
            assert chaos.current().seed == 3
        """
    )
    run(pytester, "--chaos-seed=9").assert_outcomes(passed=1)
    assert chaos.current() == ChaosSwitch(seed=3)


# --------------------------------------------------------------------------- fixtures


def test_chaos_fixture_controls_the_switch_and_restores_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest
        from naq_resilience.policies.chaos import ChaosSwitch, chaos as switch

        def test_enable_uses_the_session_seed(chaos):
            assert chaos.seed == 21
            chaos.enable(failure_rate=0.5)
            assert switch.current() == ChaosSwitch(failure_rate=0.5, seed=21)
            assert chaos.is_enabled("anything")
            chaos.enable(names="x", seed=4)
            assert chaos.current == ChaosSwitch(names=frozenset({"x"}), seed=4)
            chaos.disable()
            assert not chaos.is_enabled()

        def test_enabled_block(chaos):
            with chaos.enabled(latency_rate=1.0):
                assert switch.current() == ChaosSwitch(latency_rate=1.0, seed=21)
            assert switch.current() is None

            async def main():
                async with chaos.enabled(names="a"):
                    return switch.current()

            assert asyncio.run(main()) == ChaosSwitch(names=frozenset({"a"}), seed=21)

        def test_left_on_by_a_failing_test(chaos):
            chaos.enable()
            raise AssertionError("fails with chaos on")

        def test_restored_after_failure():
            assert switch.current() is None

        @pytest.mark.chaos(failure_rate=1.0)
        def test_fixture_inside_marker(chaos):
            assert chaos.current == ChaosSwitch(failure_rate=1.0, seed=21)
            chaos.disable()

        def test_restored_after_marker_and_fixture():
            assert switch.current() is None
        """
    )
    result = run(pytester, "--chaos-seed=21")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["E * AssertionError: fails with chaos on"])


def test_no_retry_delays_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from naq_resilience.policies.retry import is_testing, retry

        def test_delays_skipped(no_retry_delays):
            sleeps = []
            calls = []

            @retry(max_retries=2, retry_delay=30, jitter=None, sleep=sleeps.append)
            def job():
                calls.append(1)
                if len(calls) < 3:
                    raise ConnectionError("again")
                return "done"

            assert is_testing()
            assert job() == "done"
            assert sleeps == []

        def test_flag_restored():
            assert not is_testing()
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_controller_repr_names_the_seed() -> None:
    assert "seed=3" in repr(ChaosController(3))


# --------------------------------------------------------------------------- loading


def _fake_distribution(pytester: pytest.Pytester, entry_point_name: str) -> None:
    """A dist-info on sys.path declaring the pytest11 entry point, as an install would."""
    dist = pytester.mkdir("naq_fake_plugin-0.0.dist-info")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: naq-fake-plugin\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[pytest11]\n{entry_point_name} = {MODULE}\n")


def test_entry_point_named_after_the_module_coexists_with_explicit_loading(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Autoloaded, and also named by `-p` twice and by a conftest: registered once.

    pytest refuses one module registered under two names, so the entry point's name
    must be the module path for `-p <module>` and `pytest_plugins` to stay harmless.
    """
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    _fake_distribution(pytester, MODULE)
    pytester.makeconftest(f"pytest_plugins = [{MODULE!r}]")
    pytester.makepyfile(
        f"""
        import pytest
        import naq_resilience
        from naq_resilience.policies.chaos import chaos

        @pytest.mark.chaos
        def test_marked():
            assert naq_resilience.__file__.startswith({str(ROOT)!r})
            assert chaos.is_enabled()

        def test_fixture(chaos, no_retry_delays, pytestconfig):
            plugins = pytestconfig.pluginmanager.list_name_plugin()
            module = "naq_resilience.testing.pytest_plugin"
            names = [n for n, p in plugins if getattr(p, "__name__", None) == module]
            assert names == [module]
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", MODULE, *QUIET)
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("naq-resilience chaos: seed") == 1

    blocked = pytester.runpytest_subprocess("-p", "no:naq_resilience", "-p", f"no:{MODULE}", "--co")
    assert "naq-resilience chaos" not in blocked.stdout.str()
