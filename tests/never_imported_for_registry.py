"""Never imported: tests/test_registry.py checks a job naming it cannot make a worker import it.

No test imports this module; if anything ever does, importing it fails loudly.
"""

raise RuntimeError("never_imported_for_registry was imported: a job made a worker import code")


def anything() -> None:
    """What a job names: `never_imported_for_registry:anything`."""
