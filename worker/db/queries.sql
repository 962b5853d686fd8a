-- Runtime queries, one named block each (loaded by worker/db/queries.py).
-- Parameters use psycopg's %(name)s placeholders.

-- name: claim_lock
-- Claims are serialized (each takes a few ms): with concurrent claimers, SKIP LOCKED alone
-- could hand the second event of a position to one worker while another is still claiming
-- the first. The lock is released at commit.
SELECT pg_advisory_xact_lock(7365147890)

-- name: claim_events
-- A batch of pending events, oldest first. An event is claimable when it is not leased by a
-- live claim and not waiting out a retry delay, and no other event of its position is
-- (events of one position are handled in order, by one worker at a time). A lease that ran
-- out (its worker died) is simply taken over. "busy" reads only the small in-flight index.
WITH busy AS MATERIALIZED (
  SELECT DISTINCT position_id
  FROM position_events
  WHERE processed_at IS NULL AND dead_at IS NULL
    AND (lease_until IS NOT NULL OR available_at IS NOT NULL)
    AND (lease_until >= now() OR available_at > now())
),
claimable AS (
  SELECT e.id
  FROM position_events e
  WHERE e.processed_at IS NULL AND e.dead_at IS NULL
    AND (e.lease_until IS NULL OR e.lease_until < now())
    AND (e.available_at IS NULL OR e.available_at <= now())
    AND e.position_id NOT IN (SELECT position_id FROM busy)
  ORDER BY e.id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE position_events e
SET lease_until = now() + make_interval(secs => %(lease_seconds)s),
    lease_owner = %(owner)s
FROM claimable c
WHERE e.id = c.id
RETURNING e.id, e.kind, e.position_id, e.order_id, e.user_id, e.symbol, e.old_status,
          e.new_status, e.occurred_at, e.actor_role, e.data, e.attempts

-- name: mark_processed
UPDATE position_events
SET processed_at = now(), lease_until = NULL, available_at = NULL
WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s AND processed_at IS NULL

-- name: release
-- Give claimed events back untouched (shutdown, or a failure outside any handler).
UPDATE position_events
SET lease_until = NULL
WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s AND processed_at IS NULL

-- name: mark_failed
-- A handler failed: count the attempt, wait before the next one, park it after too many.
UPDATE position_events
SET attempts = attempts + 1,
    last_error = %(error)s,
    lease_until = NULL,
    available_at = now() + make_interval(secs => %(delay)s),
    dead_at = CASE WHEN attempts + 1 >= %(max_attempts)s THEN now() END
WHERE id = %(id)s AND lease_owner = %(owner)s AND processed_at IS NULL
RETURNING attempts, dead_at IS NOT NULL AS dead

-- name: defer_event
-- Try again later without counting an attempt (RetryLater: an exchange ban, an outage).
UPDATE position_events
SET lease_until = NULL, last_error = %(error)s,
    available_at = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND lease_owner = %(owner)s AND processed_at IS NULL

-- name: mark_dead
-- An event that can never be handled (unknown kind, malformed data): park it at once.
UPDATE position_events
SET attempts = attempts + 1, last_error = %(error)s, lease_until = NULL, dead_at = now()
WHERE id = %(id)s AND processed_at IS NULL

-- name: replay_event
UPDATE position_events
SET dead_at = NULL, attempts = 0, available_at = NULL, lease_until = NULL, last_error = NULL
WHERE id = %(id)s AND dead_at IS NOT NULL AND processed_at IS NULL
RETURNING id

-- name: replay_all_dead
UPDATE position_events
SET dead_at = NULL, attempts = 0, available_at = NULL, lease_until = NULL, last_error = NULL
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
