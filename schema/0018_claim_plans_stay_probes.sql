-- A claim's cost follows what it claims, however the outbox grew since its plans were made.
--
-- PL/pgSQL plans outbox_claim_fair's statements once per connection (a generic plan,
-- schema/0011), with the table's size then: a worker that starts on a quiet outbox plans
-- for a handful of pending events, and keeps those plans through a burst of thousands. Two
-- steps of schema/0017 then cost pending x claimed. The followers step found its heads and
-- its followers by ``id = ANY(ids)``, planned as a filter over the pending events: every
-- pending event compared with every claimed id. The other users' heads were ordered by id
-- alone, which the planner may read from the pending index in id order, skipping every
-- other user's events, once per user. Measured on one worker's burst of 1,000 positions
-- (about 6,000 pending events, the worker started on an empty outbox, auto_explain): the
-- claims' statements took about 600 ms of the server's time while the entries were made,
-- against about 120 ms with this version.
--
-- Now the first step keeps each head's position beside its id, and the followers are read
-- by position from each head on (idx_position_events_position: one probe per head), locked
-- there. A user's oldest events are ordered by (user_id, id), the order of
-- idx_position_events_pending_user, read from where that user's entries start. The other
-- users' events are still locked by id among the pending ones (at most p_others ids). What
-- is claimed, and in which order, is unchanged (tests/integration/test_outbox.py).
CREATE OR REPLACE FUNCTION outbox_claim_fair(p_floor bigint, p_limit integer, p_others integer)
RETURNS TABLE (
  id bigint, kind text, position_id text, order_id text, user_id text, symbol text,
  old_status text, new_status text, occurred_at text, actor_role text, data text,
  attempts integer, prev_id bigint, prev_pending boolean, prev_waiting boolean,
  min_pending bigint
)
LANGUAGE plpgsql
-- as outbox_claim (schema/0011): "auto" would re-plan the id >= p_floor scan on every call
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
  ids bigint[];
  heads uuid[];  -- the positions of ids, element by element
BEGIN
  -- the oldest heads: pending, not waiting out a retry delay, first of their position
  SELECT coalesce(array_agg(l.id ORDER BY l.id), '{}'),
         coalesce(array_agg(l.position_id ORDER BY l.id), '{}')
  INTO ids, heads
  FROM (
    SELECT e.id, e.position_id
    FROM position_events e
    WHERE e.processed_at IS NULL AND e.dead_at IS NULL AND e.id >= p_floor
      AND (e.available_at IS NULL OR e.available_at <= now())
      AND NOT EXISTS (
        SELECT 1
        FROM (SELECT p.processed_at, p.dead_at FROM position_events p
              WHERE p.position_id = e.position_id AND p.id < e.id
              ORDER BY p.id DESC LIMIT 1) prev
        WHERE prev.processed_at IS NULL AND prev.dead_at IS NULL
      )
    ORDER BY e.id
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
  ) l;

  -- room left: the later pending events of the positions whose heads this claim holds, up
  -- to the first one waiting out a retry delay (it and its followers stay), read by
  -- position from each head on; nobody else claims them (they are not heads), so those
  -- locked beyond the room are only held until this claim ends
  IF cardinality(ids) > 0 AND cardinality(ids) < p_limit THEN
    ids := ids || ARRAY(
      SELECT f.id
      FROM unnest(ids, heads) AS h(id, position_id)
      CROSS JOIN LATERAL (
        SELECT n.id FROM position_events n
        WHERE n.position_id = h.position_id AND n.id > h.id
          AND n.processed_at IS NULL AND n.dead_at IS NULL
          AND NOT EXISTS (
            SELECT 1 FROM position_events w
            WHERE w.position_id = n.position_id AND w.id < n.id AND w.available_at > now()
          )
        ORDER BY n.id
        LIMIT p_limit - cardinality(ids)
        FOR NO KEY UPDATE SKIP LOCKED
      ) f
      ORDER BY f.id
      LIMIT p_limit - cardinality(ids)
    );
  END IF;

  -- a backlog: other users' heads, in turns (every user's first, then every user's
  -- second ...), up to p_others of them from up to p_others users
  IF cardinality(ids) >= p_limit AND p_others > 0 THEN
    ids := ids || ARRAY(
      WITH RECURSIVE users AS (
        (SELECT e.user_id FROM position_events e
         WHERE e.processed_at IS NULL AND e.dead_at IS NULL
         ORDER BY e.user_id LIMIT 1)
        UNION ALL
        SELECT (SELECT e.user_id FROM position_events e
                WHERE e.processed_at IS NULL AND e.dead_at IS NULL AND e.user_id > u.user_id
                ORDER BY e.user_id LIMIT 1)
        FROM users u
        WHERE u.user_id IS NOT NULL
      ),
      others AS (
        SELECT u.user_id FROM users u
        WHERE u.user_id IS NOT NULL
          AND u.user_id NOT IN (SELECT c.user_id FROM position_events c WHERE c.id = ANY(ids))
        LIMIT p_others
      ),
      candidates AS (
        SELECT f.id, row_number() OVER (PARTITION BY o.user_id ORDER BY f.id) AS turn
        FROM others o
        CROSS JOIN LATERAL (
          SELECT e.id
          FROM position_events e
          WHERE e.user_id = o.user_id AND e.processed_at IS NULL AND e.dead_at IS NULL
            AND (e.available_at IS NULL OR e.available_at <= now())
            AND NOT EXISTS (
              SELECT 1
              FROM (SELECT p.processed_at, p.dead_at FROM position_events p
                    WHERE p.position_id = e.position_id AND p.id < e.id
                    ORDER BY p.id DESC LIMIT 1) prev
              WHERE prev.processed_at IS NULL AND prev.dead_at IS NULL
            )
          ORDER BY e.user_id, e.id
          LIMIT greatest(1, p_others / 4)
        ) f
      )
      SELECT e.id FROM position_events e
      WHERE e.id = ANY(ARRAY(SELECT c.id FROM candidates c ORDER BY c.turn, c.id LIMIT p_others))
        AND e.processed_at IS NULL AND e.dead_at IS NULL
      FOR NO KEY UPDATE SKIP LOCKED
    );
  END IF;

  IF cardinality(ids) = 0 THEN
    -- nothing this claim may take: one row of NULLs (but min_pending) says that events are
    -- pending, available and not behind a retry delay all the same, so other claims hold
    -- them (or their positions' earlier events): the worker waits for a claim to end
    -- instead of claiming again at every notification
    RETURN QUERY
    SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
           NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::integer,
           NULL::bigint, NULL::boolean, NULL::boolean,
           (SELECT min(m.id) FROM position_events m
            WHERE m.processed_at IS NULL AND m.dead_at IS NULL AND m.id >= p_floor)
    WHERE EXISTS (
      SELECT 1 FROM position_events e
      WHERE e.processed_at IS NULL AND e.dead_at IS NULL AND e.id >= p_floor
        AND (e.available_at IS NULL OR e.available_at <= now())
        AND NOT EXISTS (
          SELECT 1 FROM position_events w
          WHERE w.position_id = e.position_id AND w.id < e.id AND w.available_at > now()
        )
    );
    RETURN;
  END IF;

  RETURN QUERY
  SELECT l.id, l.kind::text, l.position_id::text, l.order_id::text, l.user_id::text,
         l.symbol::text, l.old_status::text, l.new_status::text,
         (l.occurred_at AT TIME ZONE 'UTC')::text, l.actor_role, l.data::text, l.attempts,
         prev.id, prev.pending, prev.waiting,
         (SELECT min(m.id) FROM position_events m
          WHERE m.processed_at IS NULL AND m.dead_at IS NULL AND m.id >= p_floor)
  FROM position_events l
  LEFT JOIN LATERAL (
    SELECT p.id, p.processed_at IS NULL AND p.dead_at IS NULL AS pending,
           coalesce(p.available_at > now(), false) AS waiting
    FROM position_events p
    WHERE p.position_id = l.position_id AND p.id < l.id
    ORDER BY p.id DESC
    LIMIT 1
  ) prev ON true
  WHERE l.id = ANY(ids)
  ORDER BY l.id;
END
$$;

-- The worker's, not the users': PUBLIC (anon, authenticated) may not lock events.
REVOKE ALL ON FUNCTION outbox_claim_fair(bigint, integer, integer) FROM PUBLIC;
