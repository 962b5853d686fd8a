-- Runtime queries, one named block each (loaded by worker/db/queries.py).
-- Parameters use psycopg's %(name)s placeholders.

-- The claim's own statements (worker/db/outbox.py) are sent with the simple protocol, two
-- statements per round trip, so they take no bound parameters: their only values are
-- integers, formatted in by Python's %d (which cannot carry anything but digits), not
-- psycopg.sql literals (composing those cost more than the rest of a small claim).

-- name: claim_begin
-- Open the claim's transaction and claim a batch: the oldest events it may handle and, in a
-- backlog, other users' oldest (schema/0016, 0017: outbox_claim_fair).
BEGIN; SELECT * FROM outbox_claim_fair(%(floor)d, %(limit)d, %(others)d)

-- name: mark_processed
-- ids: comma-separated integers, formatted by outbox.Batch from event ids.
SELECT outbox_mark_processed('{%(ids)s}')

-- name: mark_processed_and_commit
-- The end of a claim: mark its handled events and commit, in one round trip.
SELECT outbox_mark_processed('{%(ids)s}'); COMMIT

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

-- name: start_monitoring_many
-- start_monitoring for many positions at once: the ids that moved.
UPDATE positions SET status = 'monitoring'
WHERE id = ANY(%(position_ids)s::uuid[]) AND status = 'open'
RETURNING id::text
