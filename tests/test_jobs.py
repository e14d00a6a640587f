"""The state rules: forward only, terminal states final."""

from __future__ import annotations

import pytest

from app.jobs import is_transition_allowed
from app.models import JobState

SUBMITTING = JobState.SUBMITTING
#: the states CI reports (never Submitting)
CI_STATES = [s for s in JobState if s is not SUBMITTING]
S, R, OK, F, P, C = (
    JobState.SUBMITTED,
    JobState.RUNNING,
    JobState.SUCCESS,
    JobState.FAILED,
    JobState.PAUSE,
    JobState.CANCEL,
)

ALLOWED = {
    (None, s) for s in CI_STATES
} | {(SUBMITTING, s) for s in CI_STATES} | {
    (S, R), (S, P), (S, OK), (S, F), (S, C),
    (R, P), (R, OK), (R, F), (R, C),
    (P, R), (P, OK), (P, F), (P, C),
}  # fmt: skip


@pytest.mark.parametrize("current", [None, *JobState])
@pytest.mark.parametrize("new", CI_STATES)
def test_transition_table(current: JobState | None, new: JobState) -> None:
    assert is_transition_allowed(current, new) == ((current, new) in ALLOWED)


@pytest.mark.parametrize("terminal", [OK, F, C])
def test_terminal_states_are_final(terminal: JobState) -> None:
    assert terminal.is_terminal
    assert not any(is_transition_allowed(terminal, s) for s in CI_STATES)


def test_event_names_are_past_tense_verbs() -> None:
    assert [s.event_name for s in CI_STATES] == [
        "submitted", "running", "succeeded", "failed", "paused", "cancelled",
    ]  # fmt: skip
