"""Plain data, no behaviour beyond views: what CI reports and what cirelay records.

- :mod:`~app.models.job`: job states, notifications and what each says about a job, jobs,
  events, workflow instances, ids;
- :mod:`~app.models.delivery`: subscriptions, deliveries and attempts, claims, the filters
  that select them, the audit log's entries.

Import the names from here (``from app.models import Job``).
"""

from app.models.delivery import (
    Actor,
    AttemptResult,
    AuditEntry,
    Claim,
    Delivery,
    DeliveryAttempt,
    DeliveryFilter,
    DeliveryState,
    Figures,
    QuarantineFilter,
    Subscription,
    TypeFilter,
)
from app.models.job import (
    KNOWN_TAGS,
    TERMINAL_STATES,
    VOICE_SEPARATE,
    WORKFLOW_STATES,
    WORKFLOW_TAG,
    ApplyResult,
    Event,
    Job,
    JobReport,
    JobState,
    Notification,
    NotificationRecord,
    Outcome,
    QuarantinedNotification,
    Received,
    Source,
    WorkflowExecution,
    WorkflowReport,
    iso_z,
    new_id,
    tag_label,
)

__all__ = [
    "KNOWN_TAGS",
    "TERMINAL_STATES",
    "VOICE_SEPARATE",
    "WORKFLOW_STATES",
    "WORKFLOW_TAG",
    "Actor",
    "ApplyResult",
    "AttemptResult",
    "AuditEntry",
    "Claim",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryFilter",
    "DeliveryState",
    "Event",
    "Figures",
    "Job",
    "JobReport",
    "JobState",
    "Notification",
    "NotificationRecord",
    "Outcome",
    "QuarantineFilter",
    "QuarantinedNotification",
    "Received",
    "Source",
    "Subscription",
    "TypeFilter",
    "WorkflowExecution",
    "WorkflowReport",
    "iso_z",
    "new_id",
    "tag_label",
]
