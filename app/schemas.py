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

Explaining is bounded, because an invalid document is what a hostile sender controls and
xmlschema's work grows with every element it decodes and every violation it builds (a
650 KB notification of 5,000 elements with 16 unknown attributes each kept it busy for
over a minute). ``iter_errors`` yields a document's violations only once it has decoded
the whole document, so stopping the iterator after :data:`MAX_VIOLATIONS` bounds what is
reported, not what is built; a validation hook bounds that: before xmlschema decodes an
element it charges one unit for the element, one for each child and one for each attribute
(about one per violation xmlschema can raise there), and stops xmlschema once
:data:`EXPLAIN_BUDGET` units are spent. When it stops before finding a reason (the first
violation lies further on), libxml2's first errors are the reasons: the document is refused
either way, and libxml2 has already found them (in C, about one per element at most).

Callers hand in parsed elements. Parsing untrusted bytes safely (no DTD, no entities, no
network, size and depth caps) is the caller's job; this module never parses a document.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import xmlschema
from lxml import etree

log = logging.getLogger(__name__)

DOCUMENTS: dict[str, str] = {
    #: a VoiceSeparate TaskFinish, typed: applied to each JobsDetail whose Tag is VoiceSeparate
    "notification": "notification.xsd",
    #: any tag's TaskFinish: the envelope every CI job shares, Operation open
    "task_notification": "task-notification.xsd",
    #: a workflow instance's WorkflowFinish
    "workflow_notification": "workflow-notification.xsd",
    "create_request": "create-request.xsd",
    "create_response": "create-response.xsd",
    "describe_response": "describe-response.xsd",
    "error": "error.xsd",
}

#: violations explained per document; the first ones say what is wrong
MAX_VIOLATIONS = 20
#: elements, children and attributes xmlschema may look at to explain one document: a
#: notification with one job is about 160
EXPLAIN_BUDGET = 400

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
        #: each thread's own libxml2 validators: a validator's ``error_log`` is the last
        #: document it validated, whichever thread sent it (another sender's values)
        self._local = threading.local()

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
        return bool(self._own(name).validate(root))

    def _own(self, name: str) -> etree.XMLSchema:
        """This thread's libxml2 validator of ``name``, whose ``error_log`` is its own."""
        mine: dict[str, etree.XMLSchema] = self._local.__dict__.setdefault("validators", {})
        if name not in mine:
            self.lxml_for(name)  # KeyError for an unknown document
            parser = etree.XMLParser(resolve_entities=False, no_network=True)
            xsd = etree.parse(str(self.directory / DOCUMENTS[name]), parser)
            mine[name] = etree.XMLSchema(xsd)
        return mine[name]

    def validate(self, name: str, root: etree._Element) -> list[Violation]:
        """``[]`` when ``root`` is valid, else at most :data:`MAX_VIOLATIONS` violations."""
        if self.is_valid(name, root):
            return []
        validator = self._own(name)  # its error_log: this document's errors
        violations, complete = self._explain(name, root)
        if violations:
            return violations
        if not complete:  # xmlschema stopped before the first violation: libxml2 says why
            return [
                Violation(path=entry.path or "/", reason=entry.message)
                for entry in itertools.islice(
                    cast(Iterable[Any], validator.error_log), MAX_VIOLATIONS
                )
            ]
        log.warning(
            "libxml2 rejected a %s document that xmlschema accepts; xmlschema wins: %s",
            name,
            str(validator.error_log).partition("\n")[0],
        )
        return []

    def explain(self, name: str, root: etree._Element) -> list[Violation]:
        """xmlschema's first violations in ``root`` (``[]`` when valid), at most
        :data:`MAX_VIOLATIONS`, found within :data:`EXPLAIN_BUDGET`."""
        return self._explain(name, root)[0]

    def _explain(self, name: str, root: etree._Element) -> tuple[list[Violation], bool]:
        """The violations, and whether xmlschema looked at the whole document."""
        spent = 0

        def budget(elem: Any, _xsd: Any) -> bool:
            nonlocal spent
            spent += 1 + len(elem) + len(elem.attrib)
            if spent > EXPLAIN_BUDGET:
                raise xmlschema.XMLSchemaStopValidation()
            return False  # go on with this element

        errors = self.xmlschema_for(name).iter_errors(
            root, use_location_hints=False, validation_hook=budget
        )
        violations = [
            Violation(path=_path_of(e, root), reason=_reason_of(e))
            for e in itertools.islice(errors, MAX_VIOLATIONS)
        ]
        return violations, spent <= EXPLAIN_BUDGET

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
