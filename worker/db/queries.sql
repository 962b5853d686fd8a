-- Runtime queries, one named block each (loaded by worker/db/queries.py).
-- Parameters use psycopg's %(name)s placeholders.

-- name: claim_events
-- A batch of pending events, oldest first, locked for the rest of the claim's transaction
-- (other claimers skip them). Each comes with its predecessor (the position's event just
-- before it) so the dispatcher can keep per-position order: an event whose predecessor is
-- still pending and not in this batch is left alone (another worker holds it, or it waits
-- out a retry delay). An event waiting out its retry delay is not claimable.
WITH waiting AS MATERIALIZED (
  -- positions with an event waiting out a retry delay (few; idx_position_events_waiting):
  -- their later events are not claimed (they would fill every batch and hold back
  -- everything newer). Computed once per claim, never per row. available_at is set only
  -- on pending events (cleared when handled or parked: schema/0010), so this condition
  -- alone says "pending and waiting"; do not add processed_at/dead_at conditions here, or
  -- the pending index answers it too and the planner may scan every pending event.
  SELECT position_id, min(id) AS first_id
  FROM position_events
  WHERE available_at > now()
  GROUP BY position_id
),
locked AS (
  SELECT id, kind, position_id, order_id, user_id, symbol, old_status, new_status,
         occurred_at, actor_role, data, attempts
  FROM position_events e
  WHERE processed_at IS NULL AND dead_at IS NULL
    AND (available_at IS NULL OR available_at <= now())
    AND NOT EXISTS (
      SELECT 1 FROM waiting w WHERE w.position_id = e.position_id AND w.first_id < e.id
    )
  ORDER BY id
  LIMIT %(limit)s
  FOR NO KEY UPDATE SKIP LOCKED
)
-- uuids, data and the UTC time as text: the dispatcher only needs their text (parsing it is
-- cheaper than building UUID and datetime objects and printing them again)
SELECT l.id, l.kind, l.position_id::text AS position_id, l.order_id::text AS order_id,
       l.user_id::text AS user_id, l.symbol, l.old_status, l.new_status,
       (l.occurred_at AT TIME ZONE 'UTC')::text AS occurred_at,
       l.actor_role, l.data::text AS data, l.attempts,
       prev.id AS prev_id, prev.pending AS prev_pending, prev.waiting AS prev_waiting
FROM locked l
LEFT JOIN LATERAL (
  SELECT p.id, p.processed_at IS NULL AND p.dead_at IS NULL AS pending,
         coalesce(p.available_at > now(), false) AS waiting
  FROM position_events p
  WHERE p.position_id = l.position_id AND p.id < l.id
  ORDER BY p.id DESC
  LIMIT 1
) prev ON true
ORDER BY l.id

-- name: mark_processed
-- ids: the array's text, '{1,2,3}' (cheaper to build than a list for the driver to dump)
UPDATE position_events
SET processed_at = clock_timestamp(), available_at = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND processed_at IS NULL

-- name: mark_failed
-- A handler failed: count the attempt, wait before the next one, park it after too many.
UPDATE position_events
SET attempts = attempts + 1,
    last_error = %(error)s,
    available_at = CASE WHEN attempts + 1 < %(max_attempts)s
                        THEN clock_timestamp() + make_interval(secs => %(delay)s) END,
    dead_at = CASE WHEN attempts + 1 >= %(max_attempts)s THEN clock_timestamp() END
WHERE id = %(id)s AND processed_at IS NULL
RETURNING attempts, dead_at IS NOT NULL AS dead

-- name: defer_event
-- Try again later without counting an attempt (RetryLater: an exchange ban, an outage).
UPDATE position_events
SET last_error = %(error)s, available_at = clock_timestamp() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND processed_at IS NULL

-- name: mark_dead
-- An event that can never be handled (unknown kind, malformed data): park it at once.
UPDATE position_events
SET attempts = attempts + 1, last_error = %(error)s, dead_at = clock_timestamp(),
    available_at = NULL
WHERE id = %(id)s AND processed_at IS NULL

-- name: replay_event
UPDATE position_events
SET dead_at = NULL, attempts = 0, available_at = NULL, last_error = NULL
WHERE id = %(id)s AND dead_at IS NOT NULL AND processed_at IS NULL
RETURNING id

-- name: replay_all_dead
UPDATE position_events
SET dead_at = NULL, attempts = 0, available_at = NULL, last_error = NULL
WHERE dead_at IS NOT NULL AND processed_at IS NULL
RETURNING id

-- name: wake_workers
SELECT pg_notify('position_worker_wakeup', '')

-- name: outbox_lag
-- Age of the oldest event not yet handled (0 when none), and how many wait.
SELECT coalesce(extract(epoch FROM now() - min(occurred_at)), 0)::float8 AS lag_seconds,
       count(*) AS pending
FROM position_events
WHERE processed_at IS NULL AND dead_at IS NULL

-- name: dead_events
SELECT id, kind, position_id, old_status, new_status, attempts, last_error, dead_at
FROM position_events
WHERE dead_at IS NOT NULL AND processed_at IS NULL
ORDER BY id
LIMIT %(limit)s

-- name: dead_count
SELECT count(*) FROM position_events WHERE dead_at IS NOT NULL AND processed_at IS NULL

-- name: positions_by_status
SELECT status, count(*) FROM positions GROUP BY status ORDER BY status

-- name: orders_in_flight
SELECT count(*) FROM orders WHERE status IN ('created', 'submitted', 'partially_filled')

-- name: start_monitoring
-- The AI monitor has been asked to manage the position: open -> monitoring, once.
UPDATE positions SET status = 'monitoring'
WHERE id = %(position_id)s AND status = 'open'
RETURNING id
