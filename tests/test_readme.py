"""README.md stays true to the code: its Python snippets run, its commands match CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from naq_resilience import set_testing
from naq_resilience.policies import classify

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_the_two_setup_commands() -> None:
    assert "<!-- run-command -->" in README
    assert "<!-- test-command -->" in README
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.usefixtures("clean_jetstream")
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index: int, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_NATS_URL", nats_url)  # the job snippets talk to the test server
    set_testing(True)  # the snippets use real delays; the test must not wait for them
    hooks = list(classify._hooks)  # snippets register hooks, as users would
    try:
        _run_snippet(index)
    finally:
        set_testing(False)
        classify._hooks[:] = hooks


def _run_snippet(index: int) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_snippet_{index}"}
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), namespace)
