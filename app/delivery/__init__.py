"""Webhook delivery: every event to every subscription that wants it, signed, in order per job,
at least once.

The flow, run by ``cirelay worker`` (:class:`Deliverer`):

1. **Fan out.** Each enabled subscription has a cursor into the outbox (``fanout_seq``); new
   events matching its types become ``deliveries`` rows, and the cursor moves, in one
   transaction. Events become visible in sequence order (see :func:`app.store.insert_events`),
   so a cursor never skips one.
2. **Claim.** A worker leases due deliveries (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
   several workers on several replicas share the work without taking the same row; SQLite has
   one writer at a time). A delivery is not due while an earlier event of the same job to the
   same subscription is still pending: one job's events reach a subscriber in order.
3. **Send**, outside any transaction: a POST of the CloudEvent (JSON structured mode) with the
   Standard Webhooks headers, signed, to an address checked again at connect (DNS rebinding);
   no redirects followed; the whole attempt ends at its deadline. No subscription has more
   than its cap of deliveries leased at once (counted in the database over every worker), so
   a slow one cannot take every slot.
4. **Record** the attempt and move the delivery on: 2xx done; 410 Gone disables the
   subscription; anything else retries on the configured schedule with jitter (``Retry-After``
   honoured on 429 and 503) until the schedule is exhausted.
5. **Health.** A subscription counts as failing from a failed attempt until it is healthy
   again: :data:`HEALTHY_STREAK` 2xx in a row, or a 2xx a quarter of the disable period after
   the last failure (for subscribers that get few events). One failing for the configured
   period (a subscriber that is down, or flapping: up now and then, failing mostly) is
   disabled, and an operator event (``com.cirelay.subscription.disabled``) goes into the
   outbox. One that had been down and answers 2xx again has its retries brought forward, in
   event order, at a bounded rate, instead of each waiting out its backoff.

Leases are renewed while an attempt runs and lapse when its worker dies; the delivery is then
sent again with the same ``webhook-id``, which subscribers deduplicate on.

The modules:

- :mod:`app.delivery.transports`: step 3's sender interface, by URL scheme: HTTP
  (:class:`Sender`), NATS JetStream and RabbitMQ (one connection per broker per worker, on
  one asyncio loop thread); same body and signature headers, acknowledged before the job's
  next event.
- :mod:`app.delivery.sender`: step 3. :class:`Sender` (HTTP, the SSRF check at connect),
  :func:`signed_headers`, :class:`AttemptReport` (what one attempt came to),
  :func:`parse_retry_after`.
- :mod:`app.delivery.policy`: :class:`Policy`, the retry schedule, the lease and when to give
  up.
- :mod:`app.delivery.deliverer`: steps 1, 2, 4 and 5. :class:`Deliverer` (the worker loop and
  its leases).
- :mod:`app.delivery.build`: :func:`build_deliverer` and :func:`build_senders`, from the
  settings.
- :mod:`app.delivery.rows`: the rows the deliverer hands the store (:class:`DeliveryUpdate`,
  :class:`NewEvent`).
- :mod:`app.delivery.replay`: sending events again. :func:`parse_since`,
  :func:`start_replay`, :func:`replay_progress`.
"""

from app.delivery.build import build_deliverer, build_senders
from app.delivery.deliverer import HEALTHY_STREAK, SUBSCRIPTION_DISABLED, Deliverer, Round
from app.delivery.policy import Policy
from app.delivery.replay import Replay, parse_since, replay_progress, start_replay
from app.delivery.rows import DeliveryUpdate, NewEvent
from app.delivery.sender import AttemptReport, Sender, parse_retry_after, signed_headers

__all__ = [
    "HEALTHY_STREAK",
    "SUBSCRIPTION_DISABLED",
    "AttemptReport",
    "Deliverer",
    "DeliveryUpdate",
    "NewEvent",
    "Policy",
    "Replay",
    "Round",
    "Sender",
    "build_deliverer",
    "build_senders",
    "parse_retry_after",
    "parse_since",
    "replay_progress",
    "signed_headers",
    "start_replay",
]
