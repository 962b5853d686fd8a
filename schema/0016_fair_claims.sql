-- Fair claims: one user's flood of events cannot hold up another user's.
--
-- outbox_claim (schema/0011) takes the oldest pending events. When one user commits a
-- thousand events at once (a thousand positions, a flood of requests), every claim is that
-- user's until the flood is handled, and another user's event committed a moment later
-- waits behind all of it.
--
-- outbox_claim_fair(p_floor, p_limit, p_others) claims what outbox_claim claims (up to
-- p_limit oldest pending events, locked, each with its predecessor and min_pending) and,
-- when that fills the batch (a backlog), adds up to p_others events of other users (users
-- with a pending event and none in those p_limit): each one's oldest (up to p_others / 4
-- of them), in turns across users, the first p_others users by id. An event whose
-- position's earlier event another claim holds comes back held back, as in outbox_claim.
-- The worker handles a batch in turns across users (worker/pipeline/turns.py) and starts
-- no new position after a time budget, so the next claim comes round soon.
--
-- The users are found by a skip scan of idx_position_events_pending_user: one index probe
-- per user with pending events, however many events each has. The index holds pending
-- events only (they leave it when they are processed or parked).
CREATE INDEX idx_position_events_pending_user ON position_events (user_id, id)
  WHERE processed_at IS NULL AND dead_at IS NULL;

CREATE FUNCTION outbox_claim_fair(p_floor bigint, p_limit integer, p_others integer)
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
BEGIN
  -- the oldest pending events, exactly as outbox_claim takes them
  WITH waiting AS MATERIALIZED (
    SELECT w.position_id, min(w.id) AS first_id
    FROM position_events w
    WHERE w.available_at > now()
    GROUP BY w.position_id
  )
  SELECT coalesce(array_agg(l.id), '{}') INTO ids
  FROM (
    SELECT e.id
    FROM position_events e
    WHERE e.processed_at IS NULL AND e.dead_at IS NULL AND e.id >= p_floor
      AND (e.available_at IS NULL OR e.available_at <= now())
      AND NOT EXISTS (
        SELECT 1 FROM waiting w WHERE w.position_id = e.position_id AND w.first_id < e.id
      )
    ORDER BY e.id
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
  ) l;

  -- a backlog: other users' oldest pending events, in turns (every user's first, then
  -- every user's second ...), up to p_others of them from up to p_others users
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
      waiting AS MATERIALIZED (
        SELECT w.position_id, min(w.id) AS first_id
        FROM position_events w
        WHERE w.available_at > now()
        GROUP BY w.position_id
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
              SELECT 1 FROM waiting w WHERE w.position_id = e.position_id AND w.first_id < e.id
            )
          ORDER BY e.id
          LIMIT greatest(1, p_others / 4)
        ) f
      )
      SELECT e.id FROM position_events e
      WHERE e.id = ANY(ARRAY(SELECT c.id FROM candidates c ORDER BY c.turn, c.id LIMIT p_others))
        AND e.processed_at IS NULL AND e.dead_at IS NULL
      FOR NO KEY UPDATE SKIP LOCKED
    );
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
