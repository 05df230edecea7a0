"""docs/wire-format.md is generated from the code: it must be current and cover every record."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from naq_resilience import codec, models

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "docs" / "gen_wire_format.py"
DOC = ROOT / "docs" / "wire-format.md"

RECORDS = [
    obj
    for obj in vars(models).values()
    if isinstance(obj, type)
    and issubclass(obj, msgspec.Struct)
    and obj.__module__ == models.__name__
]


def _section(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    heading = f"\n### {name}\n"
    assert heading in text, f"docs/wire-format.md has no section for {name}"
    return text.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_the_committed_document_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stderr}(run: python docs/gen_wire_format.py)"


def test_models_defines_the_records_the_design_names() -> None:
    names = {record.__name__ for record in RECORDS}
    assert names >= {
        "JobEnvelope",
        "FailureRecord",
        "DeadLetter",
        "JobResult",
        "BreakerRecord",
        "SagaLogRecord",
    }


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_struct_in_models_is_documented(record: type[msgspec.Struct]) -> None:
    section = _section(record.__name__)
    for field in record.__struct_fields__:
        row = re.search(rf"^\| `{field}` \|[^\n]*\| (?P<meaning>[^|\n]*) \|$", section, re.M)
        assert row is not None, f"{record.__name__}.{field} is not in its field table"
        assert row["meaning"].strip(), f"{record.__name__}.{field} has no meaning: document it"
    assert f'"title": "{record.__name__}"' in section  # its JSON Schema


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_example_in_the_document_reads_as_its_record(record: type[msgspec.Struct]) -> None:
    """What someone copies from the document is what a worker accepts."""
    section = _section(record.__name__).split("<details>", 1)[0]
    examples = re.findall(r"```json\n(.*?)\n```", section, re.S)
    assert examples, f"{record.__name__} has no example"
    for example in examples:
        data = example.encode()
        decoded = codec.decode(data, record)
        # A part of another record (a ReplayRecord in a DeadLetter) has no version of its own.
        assert getattr(decoded, "version", 1) == 1
        if record is models.JobEnvelope:
            assert codec.decode_envelope(data) == decoded


def _generator(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """docs/gen_wire_format.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gen_wire_format", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def test_check_mode_fails_on_a_stale_document_and_writing_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = _generator(monkeypatch)
    stale = tmp_path / "docs" / "wire-format.md"
    stale.parent.mkdir()
    stale.write_text(DOC.read_text(encoding="utf-8").replace("NAQ_JOBS", "OLD_JOBS"))
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "OUTPUT", stale)
    assert generator.main(["--check"]) == 1
    assert "docs/wire-format.md is stale" in capsys.readouterr().err
    assert generator.main([]) == 0
    assert stale.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
    assert generator.main(["--check"]) == 0
