"""Switchable faults: the ways a real CI misbehaves, on demand and reproducibly.

Every fault has a :class:`Trigger`: it fires for the *next N* occasions, then with a
probability drawn from one seeded :class:`random.Random`, so a run with the same seed and the
same sequence of jobs misbehaves the same way. Faults are set at start (``EmulatorConfig``,
``CIRELAY_EMULATOR_FAULTS``) and changed at run time (``POST /_emulator/faults``), both in the
JSON form of :meth:`FaultSettings.to_json`::

    {"seed": 7,
     "duplicate":      {"probability": 0, "next": 1, "copies": 2},
     "reorder":        {"probability": 0, "next": 0, "mode": "stale", "batch": 2,
                        "hold_seconds": 5.0},
     "delay":          {"probability": 0, "next": 0, "seconds": 2.0},
     "drop":           {"probability": 0, "next": 0},
     "malformed":      {"probability": 0, "next": 0, "kind": "truncated"},
     "create_5xx":     {"probability": 0, "next": 0},
     "create_timeout": {"probability": 0, "next": 0, "seconds": 30.0, "creates_job": true}}

What each one does (the occasion is one finished job's notification, except for the two
``create_*`` faults, whose occasion is one ``POST /jobs``):

``duplicate``
    the notification is delivered ``copies`` times in all, one after the other.
``reorder``
    ``mode="stale"``: after the final notification, a stale one saying ``Running`` is
    delivered. ``mode="reverse"``: notifications are held until ``batch`` of them are
    waiting (or the oldest has waited ``hold_seconds``), then released newest first.
``delay``
    the first attempt waits ``seconds`` more.
``drop``
    nothing is ever sent; the job still finishes and ``GET /jobs`` shows it.
``malformed``
    the first attempt carries a broken body (``kind="truncated"``: cut in half;
    ``kind="invalid"``: well-formed but with an unknown ``State``), every later attempt the
    good one, whatever the receiver answered to the broken one: nothing is lost.
``create_5xx``
    ``POST /jobs`` answers 503 ``ServiceUnavailable`` and creates nothing.
``create_timeout``
    ``POST /jobs`` answers only after ``seconds`` (past any sane client timeout). With
    ``creates_job`` (the default, and the nasty real-world case) the job is created and runs
    before the answer is sent, so the client never learns a JobId of a job that exists;
    without it nothing is created and the late answer is 503.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

FaultName = Literal[
    "duplicate", "reorder", "delay", "drop", "malformed", "create_5xx", "create_timeout"
]
FAULT_NAMES: tuple[FaultName, ...] = (
    "duplicate",
    "reorder",
    "delay",
    "drop",
    "malformed",
    "create_5xx",
    "create_timeout",
)


class FaultSettingsError(ValueError):
    """A fault setting is unknown or out of range; the message names it."""


@dataclass(frozen=True)
class Trigger:
    """When a fault fires: the next ``next`` occasions, then with ``probability``."""

    probability: float = 0.0
    next: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise FaultSettingsError("probability must be between 0 and 1")
        if self.next < 0:
            raise FaultSettingsError("next must be >= 0")


@dataclass(frozen=True)
class DuplicateFault(Trigger):
    copies: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.copies <= 10:
            raise FaultSettingsError("copies must be between 2 and 10")


@dataclass(frozen=True)
class ReorderFault(Trigger):
    mode: Literal["stale", "reverse"] = "stale"
    batch: int = 2
    hold_seconds: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("stale", "reverse"):
            raise FaultSettingsError("mode must be 'stale' or 'reverse'")
        if self.batch < 2:
            raise FaultSettingsError("batch must be >= 2")
        if self.hold_seconds <= 0:
            raise FaultSettingsError("hold_seconds must be > 0")


@dataclass(frozen=True)
class DelayFault(Trigger):
    seconds: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seconds < 0:
            raise FaultSettingsError("seconds must be >= 0")


@dataclass(frozen=True)
class MalformedFault(Trigger):
    kind: Literal["truncated", "invalid"] = "truncated"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ("truncated", "invalid"):
            raise FaultSettingsError("kind must be 'truncated' or 'invalid'")


@dataclass(frozen=True)
class CreateTimeoutFault(Trigger):
    seconds: float = 30.0
    creates_job: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seconds < 0:
            raise FaultSettingsError("seconds must be >= 0")


@dataclass(frozen=True)
class FaultSettings:
    """Every fault's trigger and parameters, plus the seed of the random draws."""

    seed: int = 0
    duplicate: DuplicateFault = field(default_factory=DuplicateFault)
    reorder: ReorderFault = field(default_factory=ReorderFault)
    delay: DelayFault = field(default_factory=DelayFault)
    drop: Trigger = field(default_factory=Trigger)
    malformed: MalformedFault = field(default_factory=MalformedFault)
    create_5xx: Trigger = field(default_factory=Trigger)
    create_timeout: CreateTimeoutFault = field(default_factory=CreateTimeoutFault)

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"seed": self.seed}
        for name in FAULT_NAMES:
            fault = getattr(self, name)
            result[name] = {f.name: getattr(fault, f.name) for f in fields(fault)}
        return result

    def updated(self, changes: Mapping[str, Any]) -> FaultSettings:
        """A copy with the faults named in ``changes`` updated field by field; raises
        :class:`FaultSettingsError` naming the first bad key or value."""
        if not isinstance(changes, Mapping):
            raise FaultSettingsError("fault settings must be a JSON object")
        result = self
        for name, value in changes.items():
            if name == "seed":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise FaultSettingsError("seed: must be an integer")
                result = replace(result, seed=value)
                continue
            if name not in FAULT_NAMES:
                raise FaultSettingsError(f"{name}: unknown fault; known: {', '.join(FAULT_NAMES)}")
            if not isinstance(value, Mapping):
                raise FaultSettingsError(f"{name}: must be an object")
            current = getattr(result, name)
            known = {f.name: f.type for f in fields(current)}
            for key, item in value.items():
                if key not in known:
                    raise FaultSettingsError(f"{name}.{key}: unknown setting")
                _check_type(f"{name}.{key}", getattr(current, key), item)
            try:
                result = replace(result, **{name: replace(current, **dict(value))})
            except FaultSettingsError as exc:
                raise FaultSettingsError(f"{name}: {exc}") from exc
        return result


def _check_type(path: str, current: object, value: object) -> None:
    """JSON types only: ints where ints are, numbers where floats are, and so on."""
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise FaultSettingsError(f"{path}: expected {type(current).__name__}")


class Faults:
    """The run-time state of the faults: settings, the ``next`` counters left, the RNG.

    Thread-safe: request threads (create faults) and the notifier (delivery faults) draw
    from it concurrently.
    """

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._remaining: dict[str, int] = {}
        self._fired: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self._rng = random.Random(0)  # noqa: S311 - reproducible chaos, not cryptography
        self.configure(settings or FaultSettings())

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._settings

    def configure(self, settings: FaultSettings) -> None:
        """Replace every setting; the ``next`` counters restart; the RNG is re-seeded."""
        with self._lock:
            self._settings = settings
            self._remaining = {name: getattr(settings, name).next for name in FAULT_NAMES}
            self._rng.seed(settings.seed)

    def update(self, changes: Mapping[str, Any]) -> FaultSettings:
        """Apply a partial JSON update (``{"reset": true}`` first clears everything).

        Only the faults named restart their ``next`` counter; the RNG is re-seeded only when
        ``seed`` is given, so turning one fault on does not replay the others' draws.
        """
        changes = dict(changes)
        reset = changes.pop("reset", False)
        with self._lock:
            base = FaultSettings() if reset else self._settings
            settings = base.updated(changes)
            self._settings = settings
            names = FAULT_NAMES if reset else [n for n in FAULT_NAMES if n in changes]
            for name in names:
                self._remaining[name] = getattr(settings, name).next
            if reset or "seed" in changes:
                self._rng.seed(settings.seed)
            return settings

    def fire(self, name: FaultName) -> bool:
        """Whether fault ``name`` fires on this occasion (consumes one ``next``)."""
        with self._lock:
            fired = self._decide(name)
            if fired:
                self._fired[name] += 1
            return fired

    def _decide(self, name: FaultName) -> bool:
        if self._remaining.get(name, 0) > 0:
            self._remaining[name] -= 1
            return True
        probability: float = getattr(self._settings, name).probability
        return probability > 0 and self._rng.random() < probability

    def uniform(self, low: float, high: float) -> float:
        """A draw from the same seeded RNG (the notifier's retry jitter)."""
        with self._lock:
            return self._rng.uniform(low, high)

    def status(self) -> dict[str, Any]:
        """Settings, ``next`` counters left and how often each fault fired (admin view)."""
        with self._lock:
            return {
                "settings": self._settings.to_json(),
                "remaining": dict(self._remaining),
                "fired": dict(self._fired),
            }
