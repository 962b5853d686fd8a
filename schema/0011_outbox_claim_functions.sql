-- The outbox claim as functions, so that a claim costs two round trips instead of four.
--
-- A claim is a transaction: BEGIN, claim (locks), ... publish and handle ..., mark
-- processed, COMMIT. Sent as separate statements that is four round trips per batch, and
-- when events trickle in (a batch of one or two events per wake-up) those round trips were
-- most of the worker's CPU. As functions, the worker sends "BEGIN; SELECT * FROM
-- outbox_claim(...)" and "SELECT outbox_mark_processed(...); COMMIT" (simple protocol, two
-- statements each), and PL/pgSQL caches the plans per session (planning the claim takes
-- longer than running it). Works through a transaction pooler too: no session
-- state (PREPARE) is needed.
--
-- outbox_claim(p_floor, p_limit): up to p_limit pending events with id >= p_floor, oldest
-- first, locked (FOR NO KEY UPDATE SKIP LOCKED) until the transaction ends. Each row comes
-- with its predecessor (same position, next lower id) so the caller can keep per-position
-- order: an event whose predecessor is still pending and not in the batch is left alone
-- (another worker holds it). Events waiting out a retry delay are not claimed, nor any
-- later event of their position. Every row also carries min_pending: the lowest pending id
-- >= p_floor at the claim's snapshot (the caller's next floor, see worker/pipeline/floor.py).
--
-- p_floor exists because handled events leave dead entries at the low end of the pending
-- index until VACUUM removes them, and a claim that starts at id 0 walks all of them: on a
-- busy audit trail, millions (autovacuum's default threshold is a fifth of the table).
CREATE FUNCTION outbox_claim(p_floor bigint, p_limit integer)
RETURNS TABLE (
  id bigint, kind text, position_id text, order_id text, user_id text, symbol text,
  old_status text, new_status text, occurred_at text, actor_role text, data text,
  attempts integer, prev_id bigint, prev_pending boolean, prev_waiting boolean,
  min_pending bigint
)
LANGUAGE plpgsql
-- The generic plan is the custom plan's shape, but its estimate for "id >= p_floor" (a third
-- of the rows) is always worse, so "auto" would re-plan on every call: 0.5 ms a claim
-- instead of 0.1 ms (50,000 pending).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH waiting AS MATERIALIZED (
    -- positions with an event waiting out a retry delay (few; idx_position_events_waiting):
    -- their later events are not claimed (they would fill every batch and hold back
    -- everything newer). available_at is set only on pending events (schema/0010), so
    -- this condition alone says "pending and waiting"; do not add processed_at/dead_at
    -- conditions, or the pending index answers it too and may be scanned whole.
    SELECT w.position_id, min(w.id) AS first_id
    FROM position_events w
    WHERE w.available_at > now()
    GROUP BY w.position_id
  ),
  locked AS (
    SELECT e.id, e.kind, e.position_id, e.order_id, e.user_id, e.symbol, e.old_status,
           e.new_status, e.occurred_at, e.actor_role, e.data, e.attempts
    FROM position_events e
    WHERE e.processed_at IS NULL AND e.dead_at IS NULL AND e.id >= p_floor
      AND (e.available_at IS NULL OR e.available_at <= now())
      AND NOT EXISTS (
        SELECT 1 FROM waiting w WHERE w.position_id = e.position_id AND w.first_id < e.id
      )
    ORDER BY e.id
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
  )
  -- uuids, data and the UTC time as text: the worker only needs their text (parsing it is
  -- cheaper than building UUID and datetime objects and printing them again)
  SELECT l.id, l.kind::text, l.position_id::text, l.order_id::text, l.user_id::text,
         l.symbol::text, l.old_status::text, l.new_status::text,
         (l.occurred_at AT TIME ZONE 'UTC')::text, l.actor_role, l.data::text, l.attempts,
         prev.id, prev.pending, prev.waiting,
         (SELECT min(m.id) FROM position_events m
          WHERE m.processed_at IS NULL AND m.dead_at IS NULL AND m.id >= p_floor)
  FROM locked l
  LEFT JOIN LATERAL (
    SELECT p.id, p.processed_at IS NULL AND p.dead_at IS NULL AS pending,
           coalesce(p.available_at > now(), false) AS waiting
    FROM position_events p
    WHERE p.position_id = l.position_id AND p.id < l.id
    ORDER BY p.id DESC
    LIMIT 1
  ) prev ON true
  ORDER BY l.id;
END
$$;

-- Mark handled events processed (they commit with the claim).
CREATE FUNCTION outbox_mark_processed(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE position_events SET processed_at = clock_timestamp(), available_at = NULL
  WHERE id = ANY(p_ids) AND processed_at IS NULL;
END
$$;

-- The worker's, not the users': PUBLIC (anon, authenticated) may not lock or mark events.
REVOKE ALL ON FUNCTION outbox_claim(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_mark_processed(bigint[]) FROM PUBLIC;
