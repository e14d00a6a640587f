"""The Dockerfile and .dockerignore, checked without a Docker engine: what the image is built
from, who it runs as, what it contains and how it starts."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from app.schemas import DOCUMENTS
from tests.docker.dockerfile import (
    REPO,
    Dockerfile,
    Healthcheck,
    Instruction,
    Stage,
    exec_form,
    parse_env,
)
from tests.docker.dockerignore import DockerIgnore

PINNED_PYTHON = re.compile(r"python:3\.11\.\d+-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?")
BUILD_TOOLS = re.compile(
    r"(?<![\w.-])(gcc|g\+\+|cc|c\+\+|clang|make|cmake|ninja|build-essential|pkg-config"
    r"|autoconf|automake|libtool|cargo|rustc|[\w.+]+-dev)(?![\w.-])"
)
PACKAGE_INSTALL = re.compile(r"\b(apt-get|apt|apk|dnf|yum|microdnf)\s+(install|add)\b")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read()


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore.read(REPO)


def venv_copy_source(dockerfile: Dockerfile) -> Stage:
    """The stage the final stage copies its virtualenv from."""
    for copy in dockerfile.final.copies():
        if "from" in copy.flags and any(s.rstrip("/") == "/opt/venv" for s in copy.sources):
            return dockerfile.stage(copy.flags["from"])
    raise AssertionError("the final stage copies no /opt/venv from another stage")


# --- stages and base images -----------------------------------------------------------------


def test_multi_stage_with_the_venv_built_in_a_builder(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    names = [s.name for s in dockerfile.stages[:-1]]
    # the final stage starts afresh from the base image, not from a stage with build tools in it
    assert dockerfile.final.base not in names
    builder = venv_copy_source(dockerfile)
    assert builder is not dockerfile.final
    # the venv's interpreter is a symlink to the base image's: both stages need the same one
    assert builder.base == dockerfile.final.base


def test_every_from_is_a_pinned_python_3_11_slim(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        assert PINNED_PYTHON.fullmatch(stage.base), f"FROM {stage.base}: not a full 3.11.N tag"
        assert "latest" not in stage.base
        assert "$" not in stage.base


# --- the final stage ------------------------------------------------------------------------


def test_final_stage_runs_as_uid_10001(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER")
    assert user is not None, "the final stage sets no USER: the container would run as root"
    # numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.value.strip())
    assert match, f"USER {user.value}: not numeric"
    assert int(match.group(1)) == 10001
    assert match.group(2) is None or int(match.group(2)) != 0


def test_no_build_tools_in_the_final_stage(dockerfile: Dockerfile) -> None:
    for run in dockerfile.final.all("RUN"):
        assert not BUILD_TOOLS.search(run.value), f"build tool in the final stage: {run}"
        assert not PACKAGE_INSTALL.search(run.value), f"package installed in the final stage: {run}"
        assert "pip install" not in run.value, f"pip in the final stage (use the builder): {run}"


def test_python_runtime_environment(dockerfile: Dockerfile) -> None:
    env = dockerfile.final.env()
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PIP_NO_CACHE_DIR") in ("1", "true", "on", "yes")
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "the venv's commands come first"
    builder_env = venv_copy_source(dockerfile).env()
    assert builder_env.get("PIP_NO_CACHE_DIR") in ("1", "true", "on", "yes")


def test_entrypoint_and_cmd_are_exec_form(dockerfile: Dockerfile) -> None:
    entrypoint = dockerfile.final.last("ENTRYPOINT")
    cmd = dockerfile.final.last("CMD")
    assert entrypoint is not None and cmd is not None
    # exec form: no `sh -c` in between, so the process gets the container's signals
    assert exec_form(entrypoint.value) == ["/app/docker/entrypoint.sh"]
    assert exec_form(cmd.value) == ["serve"]


def test_the_entrypoint_script_is_copied_executable(dockerfile: Dockerfile) -> None:
    [copy] = [
        c for c in dockerfile.final.copies()
        if resolve(dockerfile.final, c.instruction, c.destination) == "/app/docker/entrypoint.sh"
    ]  # fmt: skip
    assert copy.sources == ["docker/entrypoint.sh"]
    assert int(copy.flags.get("chmod", "0"), 8) & 0o111 == 0o111, "COPY --chmod=0755 expected"
    script = (REPO / "docker/entrypoint.sh").read_text()
    assert script.startswith("#!/bin/sh\n")
    assert re.search(r"^set -eu$", script, re.MULTILINE)


def test_healthcheck_uses_python_against_healthz(dockerfile: Dockerfile) -> None:
    instruction = dockerfile.final.last("HEALTHCHECK")
    assert instruction is not None
    check = Healthcheck.parse(instruction.value)
    assert check.command is not None, "HEALTHCHECK CMD in exec form expected"
    assert check.command[0] == "python"  # /opt/venv/bin/python, by PATH; slim has no curl
    assert "http://127.0.0.1:8080/healthz" in " ".join(check.command)
    assert {"interval", "timeout", "start-period", "retries"} <= set(check.options)


def test_exposes_8080(dockerfile: Dockerfile) -> None:
    exposed = {p for i in dockerfile.final.all("EXPOSE") for p in i.value.split()}
    assert exposed & {"8080", "8080/tcp"}
    script = (REPO / "docker/entrypoint.sh").read_text()
    assert "${CIRELAY_BIND:=0.0.0.0:8080}" in script  # what gunicorn binds by default


def test_oci_labels(dockerfile: Dockerfile) -> None:
    labels: dict[str, str] = {}
    args: dict[str, str] = {}
    for instruction in dockerfile.final.instructions:
        if instruction.keyword == "ARG" and "=" in instruction.value:
            name, _, default = instruction.value.partition("=")
            args[name.strip()] = default.strip()
        if instruction.keyword == "LABEL":
            labels.update(parse_env(instruction.value))

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)

    labels = {k: expand(v) for k, v in labels.items()}
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"no org.opencontainers.image.{key}"
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.title"] == PYPROJECT["project"]["name"]
    assert labels["org.opencontainers.image.base.name"].endswith(dockerfile.final.base)


def test_the_image_carries_the_schemas_where_the_app_looks(dockerfile: Dockerfile) -> None:
    # Installed from a wheel, app/ is in site-packages: the default schema directory (beside
    # the package) does not exist there, so CIRELAY_SCHEMA_DIR must point at the copied XSDs.
    schema_dir = dockerfile.final.env().get("CIRELAY_SCHEMA_DIR")
    assert schema_dir, "CIRELAY_SCHEMA_DIR is not set in the final stage"
    copies = [
        c for c in dockerfile.final.copies()
        if "from" not in c.flags and c.sources == ["schemas"]
    ]  # fmt: skip
    assert len(copies) == 1, "the final stage copies schemas/ once"
    copy = copies[0]
    assert resolve(dockerfile.final, copy.instruction, copy.destination) == schema_dir
    for name in DOCUMENTS.values():
        assert (REPO / "schemas" / name).is_file()


def test_the_builder_copies_what_building_the_wheel_needs(dockerfile: Dockerfile) -> None:
    builder = venv_copy_source(dockerfile)
    sources = {s.rstrip("/") for c in builder.copies() if "from" not in c.flags for s in c.sources}
    readme = PYPROJECT["project"]["readme"]
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", readme} | packages <= sources


# --- the build context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "var/cirelay.db",
        "var/dev-secrets",
        "tests/conftest.py",
        "bench/ingest.py",
        "bench/results/run.json",
        "cirelay.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/app.json",
        ".hypothesis/examples/x",
        "app/__pycache__/cli.cpython-311.pyc",
        "app/migrations/versions/__pycache__/0001.cpython-311.pyc",
        "build/lib/app/cli.py",
        "dist/cirelay-0.1.0-py3-none-any.whl",
        ".env",
    ],
)
def test_dockerignore_leaves_out(dockerignore: DockerIgnore, path: str) -> None:
    assert dockerignore.excluded(path)


def test_copy_sources_exist_and_are_in_the_context(
    dockerfile: Dockerfile, dockerignore: DockerIgnore
) -> None:
    for stage in dockerfile.stages:
        for copy in stage.copies():
            if "from" in copy.flags:
                continue
            for source in copy.sources:
                assert not os.path.isabs(source) and ".." not in Path(source).parts, source
                path = REPO / source
                assert path.exists(), f"{copy.instruction}: {source} does not exist"
                assert dockerignore.included(source), f"{source} is excluded by .dockerignore"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in files:
                    relative = file.relative_to(REPO).as_posix()
                    assert dockerignore.excluded(relative) == is_cache(file), relative


# --- the .dockerignore reader itself (Docker's documented behaviour) ------------------------


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        ("*/temp*", "somedir/temporary.txt", True),
        ("*/temp*", "somedir/sub/temporary.txt", False),
        ("*/temp*", "temp", False),
        ("*/*/temp*", "somedir/subdir/temporary.txt", True),
        ("temp?", "tempa", True),
        ("temp?", "tempab", False),
        ("**/*.go", "a/b/c.go", True),
        ("**/*.go", "c.go", True),
        ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
        ("*.md\n!README*.md\nREADME-secret.md", "README.md", False),
        ("*.md\n!README*.md\nREADME-secret.md", "CHANGES.md", True),
        ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
        ("/var", "var/x", True),
        ("var", "app/var", False),
        ("# var", "var", False),
        ("*\n!app", "app/a/b.py", False),
        ("*\n!app\n**/__pycache__", "app/a/__pycache__/b.pyc", True),
        ("app/**", "app/x", True),
        ("app/**", "application", False),
        ("app**", "application", True),
    ],
)
def test_dockerignore_reader(patterns: str, path: str, excluded: bool) -> None:
    assert DockerIgnore(patterns).excluded(path) is excluded


CACHE_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def is_cache(path: Path) -> bool:
    """Bytecode, tool caches and build metadata: never wanted in the context."""
    return (
        bool(CACHE_DIRS & set(path.parts))
        or any(part.endswith(".egg-info") for part in path.parts)
        or path.suffix in (".pyc", ".pyo", ".pyd")
    )


def resolve(stage: Stage, instruction: Instruction, destination: str) -> str:
    """A COPY destination made absolute against the WORKDIR in force."""
    base = stage.workdir_at(instruction)
    return os.path.normpath(os.path.join(base, destination))
