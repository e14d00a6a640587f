"""The XSDs of the CI documents, loaded once, with two validators per document.

Every document cirelay reads or writes has one XSD in ``schemas/`` (see ``DOCUMENTS``).
Each is loaded twice:

* by **xmlschema**, the authority: it explains failures (path + reason) and decodes
  documents;
* by **libxml2** (``lxml.etree.XMLSchema``), the fast path: it validates in C without
  building a Python object per node, so it answers "valid or not" on the hot path.

``validate`` asks libxml2 first and only asks xmlschema for reasons when libxml2 says no.
Should libxml2 reject a document that xmlschema accepts, xmlschema wins and a warning is
logged. (The opposite disagreement cannot be seen on the fast path; the differential test
in ``tests/test_schemas.py`` runs both validators over the whole corpus to rule it out.)

Callers hand in parsed elements. Parsing untrusted bytes safely (no DTD, no entities, no
network, size and depth caps) is the caller's job; this module never parses a document.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xmlschema
from lxml import etree

log = logging.getLogger(__name__)

DOCUMENTS: dict[str, str] = {
    "notification": "notification.xsd",
    "create_request": "create-request.xsd",
    "create_response": "create-response.xsd",
    "describe_response": "describe-response.xsd",
    "error": "error.xsd",
}

DEFAULT_SCHEMA_DIR: Path = Path(__file__).resolve().parent.parent / "schemas"


class SchemaLoadError(Exception):
    """An XSD is missing, unreadable, or rejected by xmlschema or by libxml2."""


@dataclass(frozen=True)
class Violation:
    """One reason a document is invalid.

    ``path`` is an absolute location such as ``/Response/JobsDetail/State``; ``reason`` is
    xmlschema's one-line reason.
    """

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class SchemaSet:
    """Every document schema, compiled for xmlschema and for libxml2."""

    def __init__(
        self,
        directory: Path,
        authorities: dict[str, xmlschema.XMLSchema10],
        fast: dict[str, etree.XMLSchema],
    ) -> None:
        self.directory = directory
        self._authorities = authorities
        self._fast = fast

    @classmethod
    def load(cls, directory: Path | None = None) -> SchemaSet:
        """Load every ``DOCUMENTS`` entry from ``directory`` (default ``DEFAULT_SCHEMA_DIR``).

        xmlschema is confined to the schema directory (``allow="sandbox"``: includes
        cannot leave it) and parses with defused XML; libxml2 parses with entity
        resolution and network access off, and only sees files xmlschema already
        accepted (xmlschema loads first). Raises ``SchemaLoadError`` on any failure.
        """
        base = (directory if directory is not None else DEFAULT_SCHEMA_DIR).resolve()
        authorities: dict[str, xmlschema.XMLSchema10] = {}
        fast: dict[str, etree.XMLSchema] = {}
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        for name, filename in DOCUMENTS.items():
            path = base / filename
            try:
                authorities[name] = xmlschema.XMLSchema10(
                    str(path),
                    base_url=str(base),
                    allow="sandbox",
                    defuse="always",
                    timeout=5,
                )
                fast[name] = etree.XMLSchema(etree.parse(str(path), parser))
            except (
                OSError,
                SyntaxError,
                ValueError,
                xmlschema.XMLSchemaException,
                etree.Error,
            ) as exc:
                raise SchemaLoadError(f"cannot load schema {name!r} from {path}: {exc}") from exc
        return cls(base, authorities, fast)

    def xmlschema_for(self, name: str) -> xmlschema.XMLSchema10:
        """The xmlschema object of document ``name``: the authority."""
        try:
            return self._authorities[name]
        except KeyError:
            raise KeyError(f"unknown document {name!r}; known: {sorted(DOCUMENTS)}") from None

    def lxml_for(self, name: str) -> etree.XMLSchema:
        """The libxml2 validator of document ``name``: the fast path."""
        try:
            return self._fast[name]
        except KeyError:
            raise KeyError(f"unknown document {name!r}; known: {sorted(DOCUMENTS)}") from None

    def is_valid(self, name: str, root: etree._Element) -> bool:
        """libxml2's verdict on ``root`` (the fast path; no reasons)."""
        return bool(self.lxml_for(name).validate(root))

    def validate(self, name: str, root: etree._Element) -> list[Violation]:
        """``[]`` when ``root`` is valid, else xmlschema's violations."""
        if self.is_valid(name, root):
            return []
        violations = self.explain(name, root)
        if not violations:
            log.warning(
                "libxml2 rejected a %s document that xmlschema accepts; xmlschema wins: %s",
                name,
                str(self.lxml_for(name).error_log).partition("\n")[0],
            )
        return violations

    def explain(self, name: str, root: etree._Element) -> list[Violation]:
        """Every violation xmlschema finds in ``root`` (``[]`` when valid)."""
        errors = self.xmlschema_for(name).iter_errors(root, use_location_hints=False)
        return [Violation(path=_path_of(e, root), reason=_reason_of(e)) for e in errors]

    def decode(self, name: str, root: etree._Element) -> dict[str, Any]:
        """xmlschema's ``to_dict`` of a valid document (root element left out).

        Shapes follow the schema: an element that may repeat is always a list
        (``JobsDetail``, ``ObjectName``, ``Md5Info``, and the open MediaInfo stream fields),
        ``Bitrate`` of AudioConfig is an ``int``, an empty element is ``None``.
        Raises ``xmlschema.XMLSchemaValidationError`` when ``root`` is invalid.
        """
        data = self.xmlschema_for(name).to_dict(root, use_location_hints=False)
        if not isinstance(data, dict):  # a root with no children and no text decodes to None
            return {}
        return data


def _path_of(error: xmlschema.XMLSchemaValidationError, root: etree._Element) -> str:
    if error.path:
        return str(error.path)
    elem = error.elem
    if isinstance(elem, etree._Element):
        return str(elem.getroottree().getpath(elem))
    return str(root.getroottree().getpath(root))


def _reason_of(error: xmlschema.XMLSchemaValidationError) -> str:
    text = error.reason or error.message
    return text.strip().splitlines()[0] if text.strip() else "invalid"
