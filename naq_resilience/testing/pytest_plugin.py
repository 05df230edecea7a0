"""pytest plugin: switch naq-resilience chaos on per test, reproducibly.

Loaded through the `pytest11` entry point (or `-p naq_resilience.testing.pytest_plugin`).
It adds:

- `@pytest.mark.chaos(names=..., failure_rate=..., latency_rate=..., seed=...)`: chaos
  on while the test body runs. Fixture setup and teardown run with the switch as it
  was, so a fault lands in the code under test, not in the scaffolding around it.
- the `chaos` fixture, a `ChaosController` whose `enable()` / `enabled()` default to
  the session seed; whatever the test does, the switch is put back at teardown.
- the `no_retry_delays` fixture: `@retry` makes every attempt but never sleeps.
- `--chaos-seed=N|random`: the seed every marker and fixture uses unless given one.
  The default is a fixed seed, so a suite with chaos in it passes or fails the same
  way on every run; `random` draws one per session for exploration. The seed is in
  the session header either way, and `--chaos-seed=<that seed>` replays the session's
  faults: each chaos point reseeds whenever the switch changes, so a test's faults do
  not depend on which tests ran before it. Under pytest-xdist each worker draws its own
  `random` seed; give a number there.

If `NAQ_CHAOS` already switched chaos on without `NAQ_CHAOS_SEED`, the session seed is
applied to it too, so an environment-wide chaos run is reproducible as well.

It also brings the NATS fixtures of `naq_resilience.testing.nats` (`nats_server`,
`nats_url`, `nats_client`, `clean_jetstream`, `fresh_nats_server`, `nats_cluster`);
none starts a server until a test asks for it.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterable, Iterator
from dataclasses import replace

import pytest

from naq_resilience.policies import retry as _retry
from naq_resilience.policies.chaos import ENV_NAMES, ChaosBlock, ChaosSwitch
from naq_resilience.policies.chaos import chaos as _chaos

__all__ = ["DEFAULT_SEED", "ChaosController"]

pytest_plugins = ["naq_resilience.testing.nats"]

DEFAULT_SEED = 0
_MARKER_ARGUMENTS = ("names", "failure_rate", "latency_rate", "seed")
_SEED = pytest.StashKey[int]()
_SEEDED_ENV = pytest.StashKey[ChaosSwitch]()


class ChaosController:
    """The `chaos` fixture: the master switch with the session seed as default seed.

    A test that enables chaos through it without a seed still gets reproducible
    faults; one that wants the chaos points' own seeds can call
    `naq_resilience.policies.chaos.chaos.enable()` directly.
    """

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def enable(
        self,
        names: str | Iterable[str] | None = None,
        failure_rate: float | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
    ) -> None:
        _chaos.enable(names, failure_rate, latency_rate, self.seed if seed is None else seed)

    def disable(self) -> None:
        _chaos.disable()

    def enabled(
        self,
        names: str | Iterable[str] | None = None,
        failure_rate: float | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
    ) -> ChaosBlock:
        return _chaos.enabled(
            names, failure_rate, latency_rate, self.seed if seed is None else seed
        )

    def is_enabled(self, name: str | None = None) -> bool:
        return _chaos.is_enabled(name)

    @property
    def current(self) -> ChaosSwitch | None:
        return _chaos.current()

    def __repr__(self) -> str:
        return f"<ChaosController seed={self.seed} switch={_chaos.current()!r}>"


def _parse_seed(raw: object) -> int:
    if raw is None:
        return DEFAULT_SEED
    text = str(raw).strip()
    if text.lower() == "random":
        return random.SystemRandom().randrange(1 << 32)
    try:
        return int(text)
    except ValueError:
        raise pytest.UsageError(
            f"--chaos-seed must be a whole number or 'random', got {text!r}"
        ) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("naq-resilience")
    group.addoption(
        "--chaos-seed",
        action="store",
        default=None,
        metavar="N|random",
        help=(
            f"seed for naq-resilience chaos switched on by the chaos marker or fixture "
            f"(default {DEFAULT_SEED}; 'random' draws one and prints it in the header)"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos(names=None, failure_rate=None, latency_rate=None, seed=None): switch "
        "naq-resilience chaos on while the test runs; seed defaults to --chaos-seed",
    )
    seed = _parse_seed(config.getoption("chaos_seed", default=None))
    config.stash[_SEED] = seed
    switch = _chaos.current()
    if switch is not None and switch.seed is None:
        config.stash[_SEEDED_ENV] = switch
        _chaos.restore(replace(switch, seed=seed))


def pytest_unconfigure(config: pytest.Config) -> None:
    original = config.stash.get(_SEEDED_ENV, None)
    if original is not None:
        _chaos.restore(original)


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash.get(_SEED, DEFAULT_SEED)
    switch = _chaos.current()
    if switch is None:
        state = "off outside chaos-marked tests"
    else:
        where = "every chaos point" if switch.names is None else ", ".join(sorted(switch.names))
        state = f"on for {where} ({ENV_NAMES}), seed {switch.seed}"
    return f"naq-resilience chaos: seed {seed} (replay with --chaos-seed={seed}); switch {state}"


def _marker_switch(marker: pytest.Mark, seed: int) -> ChaosSwitch:
    if marker.args:
        pytest.fail(
            f"@pytest.mark.chaos takes keyword arguments only, got {marker.args!r}; "
            "write e.g. @pytest.mark.chaos(failure_rate=0.5)",
            pytrace=False,
        )
    unknown = sorted(set(marker.kwargs) - set(_MARKER_ARGUMENTS))
    if unknown:
        pytest.fail(
            f"@pytest.mark.chaos got unknown argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_MARKER_ARGUMENTS)}",
            pytrace=False,
        )
    kwargs = {"seed": seed, **marker.kwargs}
    if kwargs["seed"] is None:
        kwargs["seed"] = seed
    try:
        return _chaos.switch(**kwargs)
    except (TypeError, ValueError) as error:
        pytest.fail(f"@pytest.mark.chaos: {error}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    marker = item.get_closest_marker("chaos")
    if marker is None:
        yield
        return
    switch = _marker_switch(marker, item.config.stash.get(_SEED, DEFAULT_SEED))
    saved = _chaos.current()
    _chaos.restore(switch)
    try:
        yield
    finally:
        _chaos.restore(saved)


@pytest.fixture(name="chaos")
def chaos_fixture(pytestconfig: pytest.Config) -> Iterator[ChaosController]:
    """Control the chaos switch in a test; it is put back as it was at teardown."""
    saved = _chaos.current()
    try:
        yield ChaosController(pytestconfig.stash.get(_SEED, DEFAULT_SEED))
    finally:
        _chaos.restore(saved)


@pytest.fixture
def no_retry_delays() -> Iterator[None]:
    """`@retry` still makes every attempt but skips its delays, then the flag comes back."""
    previous = _retry.is_testing()
    _retry.set_testing(True)
    try:
        yield
    finally:
        _retry.set_testing(previous)
