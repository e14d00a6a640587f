"""``.dockerignore`` as Docker reads it, for tests that ask what a build context holds.

A port of moby/patternmatcher (``New``, ``MatchesOrParentMatches``, the pattern-to-regexp
compiler) and of BuildKit's ignore-file reader, for slash-separated paths on Linux:

* one pattern a line; a line whose first character is ``#`` is a comment; blank lines and
  surrounding whitespace are dropped; ``!`` re-includes; a leading ``/`` is dropped and the
  pattern is cleaned (``filepath.Clean``);
* ``*`` and ``?`` never cross a ``/``; ``**`` matches any number of directories (none too);
* a pattern matches a path when it matches the path itself or one of its parent directories;
* the last pattern that matches decides.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

_ESCAPED = set(".+()|{}$")


@dataclass(frozen=True)
class Pattern:
    text: str
    exclusion: bool  # a "!" pattern: matching paths are let back in
    kind: str  # "exact", "prefix", "suffix" or "regexp", as patternmatcher decides
    regexp: re.Pattern[str] | None

    @classmethod
    def compile(cls, text: str, exclusion: bool) -> Pattern:
        out = "^"
        kind = "exact"
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "*":
                if text[i + 1 : i + 2] == "*":  # some flavour of "**"
                    j = i + 2
                    if text[j : j + 1] == "/":  # "**/" is treated as "**"
                        j += 1
                    if j == len(text):  # "**" at the end accepts everything
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            out += ".*"
                            kind = "regexp"
                    else:
                        out += "(.*/)?"
                        kind = "regexp"
                    if i == 0:
                        kind = "suffix"
                    i = j
                    continue
                out += "[^/]*"
                kind = "regexp"
            elif ch == "?":
                out += "[^/]"
                kind = "regexp"
            elif ch in _ESCAPED:
                out += "\\" + ch
            elif ch == "\\":
                if i + 1 < len(text):
                    out += "\\" + text[i + 1]
                    kind = "regexp"
                    i += 1
                else:
                    out += "\\\\"
            elif ch in "[]":
                out += ch
                kind = "regexp"
            else:
                out += ch
            i += 1
        regexp = re.compile(out + "$") if kind == "regexp" else None
        return cls(text, exclusion, kind, regexp)

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.match(path) is not None


def _clean(path: str) -> str:
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def parse(text: str) -> list[Pattern]:
    patterns = []
    for line in text.removeprefix("\ufeff").splitlines():
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
            if not line:
                raise ValueError('illegal exclusion pattern: "!"')
        line = _clean(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        patterns.append(Pattern.compile(line, exclusion))
    return patterns


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.patterns = parse(text)

    @classmethod
    def read(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls(path.read_text() if path.exists() else "")

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, slash-separated) is left out."""
        path = _clean(path)
        if path == ".":
            return False
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        matched = False
        for pattern in self.patterns:
            # an inclusion cannot change a path already left out, nor an exclusion one let in
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path) or any(
                pattern.match("/".join(parents[: i + 1])) for i in range(len(parents))
            )
            if hit:
                matched = not pattern.exclusion
        return matched

    def included(self, path: str) -> bool:
        return not self.excluded(path)
