"""`naq dlq ...` against a real server: what a person reads, what a script parses, and
that removing anything asks first."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_dead_letters import letter, write

from naq_resilience import cli
from naq_resilience.cli._common import parse_duration, parse_time

pytestmark = pytest.mark.usefixtures("clean_jetstream")


def naq(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--nats-url", url])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def letters(nats_url: str) -> list[Any]:
    made = [letter(n) for n in range(12)]
    asyncio.run(write(nats_url, made))
    return made


def test_list_shows_a_table_and_json_with_a_cursor(
    nats_url: str, letters: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = naq(capsys, nats_url, "dlq", "list", "--limit", "3", "--function", "mail:*")
    mail = [x for x in letters if x.job.function == "mail:send"]
    assert code == 0
    header, *rows = out.split("\n\n")[0].splitlines()
    assert header.split()[:3] == ["ID", "DEAD", "AT"]
    assert [row.split()[0] for row in rows] == [x.id for x in mail[:3]]
    assert "naq dlq list ... --after" in out

    code, out, _ = naq(capsys, nats_url, "dlq", "list", "--json", "--error-type", "ValueError")
    page = json.loads(out)
    assert [x["job"]["id"] for x in page["letters"]] == [
        x.id for x in letters if x.failures[0].error_type == "builtins:ValueError"
    ]
    assert page["next_after"] is None

    code, out, _ = naq(capsys, nats_url, "dlq", "count", "--json", "--dlq", "billing")
    assert json.loads(out) == {"count": sum(x.queue == "billing" for x in letters)}


def test_show_prints_the_failure_history_and_a_missing_id_is_one_line(
    nats_url: str, letters: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = naq(capsys, nats_url, "dlq", "show", letters[4].id)
    assert code == 0
    assert out.startswith(f"dead letter {letters[4].id}\n")
    assert "attempt 1 of 1" in out
    assert "analyze_failure: transient_error" in out
    code, out, _ = naq(capsys, nats_url, "dlq", "show", letters[4].id, "--json")
    assert json.loads(out)["failures"][0]["message"] == letters[4].failures[0].message
    code, out, err = naq(capsys, nats_url, "dlq", "show", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("naq dlq show: no dead letter nope")
    assert err.count("\n") == 1


def test_replay_by_id_then_again_needs_force(
    nats_url: str, letters: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    first = letters[0].id
    code, out, _ = naq(capsys, nats_url, "dlq", "replay", first, "--max-retries", "2")
    assert (code, out.splitlines()[0]) == (0, f"replayed {first} as job {first}-replay1")
    code, _, err = naq(capsys, nats_url, "dlq", "replay", first)
    assert code == 1
    assert "--force" in err
    code, out, _ = naq(capsys, nats_url, "dlq", "replay", first, "--force", "--json")
    assert json.loads(out)["replayed"] == [{"letter": first, "job": f"{first}-replay2"}]


def test_bulk_commands_ask_and_refuse_without_a_terminal(
    nats_url: str,
    letters: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    for argv in (
        ["dlq", "replay", "--queue", "mail"],
        ["dlq", "discard", "--queue", "mail"],
        ["dlq", "purge", "failed_jobs"],
        ["dlq", "archive", "--out", str(tmp_path / "a.jsonl"), "--delete"],
    ):
        code, _, err = naq(capsys, nats_url, *argv)
        assert code == 1, argv
        assert "pass --yes" in err, argv
    code, out, _ = naq(capsys, nats_url, "dlq", "count")
    assert int(out) == len(letters)  # nothing was touched

    code, _, err = naq(capsys, nats_url, "dlq", "discard")
    assert code == 2
    assert "naq dlq purge NAME" in err

    code, out, _ = naq(
        capsys, nats_url, "dlq", "replay", "--queue", "mail", "--yes", "--rate", "50"
    )
    mail = [x.id for x in letters if x.queue == "mail"]
    assert out.splitlines()[-1] == f"{len(mail)} replayed, 0 skipped"

    archive = tmp_path / "billing.jsonl"
    code, out, _ = naq(
        capsys, nats_url, "dlq", "archive", "--out", str(archive), "--dlq", "billing",
        "--delete", "--yes",
    )  # fmt: skip
    billing = [x.id for x in letters if x.queue == "billing"]
    assert out.strip() == f"archived {len(billing)} dead letters to {archive}, and removed them"
    assert [
        json.loads(line)["letter"]["job"]["id"] for line in archive.read_text().splitlines()
    ] == billing

    code, out, _ = naq(capsys, nats_url, "dlq", "discard", letters[2].id, "--yes")
    assert out.strip() == "discarded 1 dead letters"
    code, out, _ = naq(capsys, nats_url, "dlq", "purge", "failed_jobs", "--yes")
    assert out.strip() == f"purged {len(mail)} dead letters from failed_jobs"
    code, out, _ = naq(capsys, nats_url, "dlq", "count")
    assert int(out) == len(letters) - len(mail) - len(billing) - 1


def test_bad_arguments_say_what_to_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["dlq", "list", "--since", "yesterday"])
    assert exited.value.code == 2
    assert "neither a duration (2h, 7d: that long ago) nor an ISO time" in capsys.readouterr().err
    assert parse_duration("90s").total_seconds() == 90
    assert parse_duration("2h").total_seconds() == 7200
    assert parse_time("2026-11-30T08:00:00").tzinfo is not None  # type: ignore[union-attr]
