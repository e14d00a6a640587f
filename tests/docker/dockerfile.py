"""The repository's Dockerfile as stages of instructions (parsed by ``dockerfile-parse``)."""

from __future__ import annotations

import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY ...
    value: str  # the arguments, continuation lines joined
    line: int  # 1-based, where it starts

    def __str__(self) -> str:
        return f"line {self.line}: {self.keyword} {self.value}"


@dataclass
class Stage:
    base: str
    name: str | None
    platform: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_env(instruction.value))
        return values

    def copies(self) -> list[Copy]:
        return [Copy.parse(i) for i in self.all("COPY") + self.all("ADD")]

    def workdir_at(self, instruction: Instruction) -> str:
        """The working directory in force at ``instruction`` (``/`` before any WORKDIR)."""
        current = "/"
        for i in self.instructions:
            if i is instruction:
                break
            if i.keyword == "WORKDIR":
                current = str(Path(current) / i.value.strip())
        return current


@dataclass(frozen=True)
class Copy:
    instruction: Instruction
    flags: dict[str, str]  # --from=builder -> {"from": "builder"}
    sources: list[str]
    destination: str

    @classmethod
    def parse(cls, instruction: Instruction) -> Copy:
        value = instruction.value.strip()
        flags: dict[str, str] = {}
        while value.startswith("--"):
            flag, _, value = value.partition(" ")
            name, _, arg = flag[2:].partition("=")
            flags[name] = arg
            value = value.lstrip()
        args = json.loads(value) if value.startswith("[") else shlex.split(value)
        return cls(instruction, flags, args[:-1], args[-1])


@dataclass(frozen=True)
class Dockerfile:
    stages: list[Stage]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()), env_replace=False)
        stages: list[Stage] = []
        for item in parser.structure:
            keyword = item["instruction"].upper()
            if keyword == "COMMENT":
                continue
            instruction = Instruction(keyword, item["value"], item["startline"] + 1)
            if keyword == "FROM":
                stages.append(parse_from(instruction.value))
            elif not stages:
                if keyword != "ARG":  # only ARG may come before the first FROM
                    raise ValueError(f"{instruction} comes before any FROM")
                continue
            stages[-1].instructions.append(instruction)
        return cls(stages)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def parse_from(value: str) -> Stage:
    words = value.split()
    platform = None
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if flag.startswith("--platform="):
            platform = flag.partition("=")[2]
    name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
    if len(words) not in (1, 3) or (len(words) == 3 and name is None):
        raise ValueError(f"cannot read FROM {value}")
    return Stage(words[0], name, platform)


def parse_env(value: str) -> dict[str, str]:
    """``ENV A=1 B="two words"`` or the legacy ``ENV A 1``."""
    words = shlex.split(value)
    if words and "=" not in words[0]:
        return {words[0]: value.split(None, 1)[1] if len(words) > 1 else ""}
    return dict(w.split("=", 1) for w in words)


def exec_form(value: str) -> list[str] | None:
    """The JSON array of an exec-form ``CMD``/``ENTRYPOINT``/``HEALTHCHECK CMD``, else None."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if isinstance(parsed, list) and parsed and all(isinstance(a, str) for a in parsed):
        return parsed
    return None


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    command: list[str] | None  # None: shell form
    raw_command: str

    @classmethod
    def parse(cls, value: str) -> Healthcheck:
        match = re.fullmatch(r"\s*((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", value, re.DOTALL)
        if not match:
            raise ValueError(f"not a HEALTHCHECK ... CMD: {value!r}")
        options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
        return cls(options, exec_form(match.group(2).strip()), match.group(2).strip())
