"""The rules ARCHITECTURE.md states about the code, checked on the source: who may import
Flask and SQLAlchemy, where a job's state change and its lock order are written, where state
names are spelled, how long a module may grow."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
SOURCES = sorted(p for p in APP.rglob("*.py") if "versions" not in p.parts)
#: the longest a module may be, unless it is one cohesive class family (none is, today)
MAX_LINES = 600


def module(path: Path) -> str:
    return ".".join(path.relative_to(APP.parent).with_suffix("").parts).removesuffix(".__init__")


def runtime_imports(path: Path) -> Iterator[str]:
    """The modules ``path`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def in_part(path: Path, *parts: str) -> bool:
    name = module(path)
    return any(name == p or name.startswith(p + ".") for p in parts)


def test_only_the_web_layer_the_factory_the_cli_and_the_emulator_import_flask() -> None:
    allowed = ("app.web", "app.emulator")
    offenders = [
        module(p)
        for p in SOURCES
        if any(i.split(".")[0] in ("flask", "werkzeug") for i in runtime_imports(p))
        and not in_part(p, *allowed)
        and module(p) not in ("app", "app.cli")  # create_app; `cirelay routes`
    ]
    assert offenders == []


def test_only_the_store_and_the_migrations_build_sql() -> None:
    """Elsewhere SQLAlchemy is a type (``Engine``, ``Connection``) or an exception to catch."""
    offenders = [
        f"{module(p)}: {i}"
        for p in SOURCES
        if not in_part(p, "app.store", "app.migrations")
        for i in runtime_imports(p)
        if i.split(".")[0] == "sqlalchemy" and i not in ("sqlalchemy.engine", "sqlalchemy.exc")
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "domain", ["app.jobs", "app.notifications", "app.events", "app.models", "app.workflows"]
)
def test_domain_modules_import_neither_flask_nor_sqlalchemy(domain: str) -> None:
    paths = [p for p in SOURCES if in_part(p, domain)]
    assert paths
    for path in paths:
        imported = runtime_imports(path)
        assert not [i for i in imported if i.split(".")[0] in ("flask", "sqlalchemy")], path


def calls_to(name: str) -> list[str]:
    """The functions (``module.function``) that call ``…name(…)``."""
    callers = []
    for path in SOURCES:
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
                    callers.append(f"{module(path)}.{func.name}")
    return sorted(set(callers))


def test_the_events_lock_is_taken_where_the_lock_order_is_written() -> None:
    """A single job's change (jobs.change_job) and a batch's events (the store's insert);
    the group committer takes it as each batch begins (``begin=store.hold_events_lock``)."""
    assert calls_to("hold_events_lock") == [
        "app.jobs.change_job",
        "app.store.batched.insert_events",
    ]


def test_every_single_job_change_that_writes_an_event_goes_through_change_job() -> None:
    assert calls_to("record_job_changed") == ["app.jobs.change_job"]
    assert calls_to("change_job") == [
        "app.reconciler.never_created",
        "app.submission._record_refusal",
        "app.submission.record_submitted",
    ]


STATE_NAMES = {"Submitting", "Submitted", "Running", "Success", "Failed", "Pause", "Cancel"}


def test_no_state_name_is_spelled_outside_the_job_state_enum() -> None:
    """The emulator is CI, not cirelay: it spells CI's states itself, so a mistake in
    cirelay's enum is not copied into the fake it is tested against."""
    offenders = [
        f"{module(p)}:{node.lineno} {node.value!r}"
        for p in SOURCES
        if module(p) != "app.models.job" and not in_part(p, "app.emulator")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and node.value in STATE_NAMES
    ]
    assert offenders == []


def test_no_module_is_longer_than_the_limit() -> None:
    long = {module(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
