-- Claims lock only what they may handle: each position's first pending event, and the
-- events after it of positions whose first one the claim holds.
--
-- outbox_claim_fair (schema/0016) locked the oldest pending events whatever their
-- position's earlier ones were, and returned an event whose predecessor another claim held
-- as held back. With several workers, while one handles a batch (a burst of a thousand
-- entries: about a second), the others' claims found mostly the later events of that
-- batch's positions: they locked and returned them (500 a claim), handled none, and
-- claimed again. Measured with 3 workers on a 1,000-position burst: 705 claims, 239,218
-- rows, 25 s of the server's time, against 26 claims and 0.8 s with one worker; the burst
-- was entered at 0.65x one worker's rate.
--
-- Now a claim takes, in id order, pending events whose position has no earlier pending
-- event (the heads: an event's predecessor, by idx_position_events_position, is handled or
-- parked), SKIP LOCKED; then, up to the limit, the later pending events of the positions
-- whose heads it locked, in id order. Whoever holds a position's head holds the right to
-- its next events; no other claim locks them. The result rows are as before (prev_id,
-- prev_pending, prev_waiting, min_pending): the worker still checks every event's
-- predecessor, so per-position order does not depend on this rule.
--
-- A claim that may take nothing while events are pending returns one row of NULLs but
-- min_pending (every pending event is another claim's, or follows one): the worker then
-- waits for one of its own claims to end, or a short pause, before it claims again.
--
-- An event whose predecessor is pending below the claim floor is not returned (it used to
-- come back held back, and set off a full claim at once): the periodic full claim
-- (pipeline.poll_interval) finds the predecessor, and the event after it.
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
BEGIN
  -- the oldest heads: pending, not waiting out a retry delay, first of their position
  SELECT coalesce(array_agg(l.id), '{}') INTO ids
  FROM (
    SELECT e.id
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
  -- to the first one waiting out a retry delay (it and its followers stay)
  IF cardinality(ids) > 0 AND cardinality(ids) < p_limit THEN
    ids := ids || ARRAY(
      SELECT e.id FROM position_events e
      WHERE e.id = ANY(ARRAY(
          SELECT n.id
          FROM position_events h
          CROSS JOIN LATERAL (
            SELECT n.id FROM position_events n
            WHERE n.position_id = h.position_id AND n.id > h.id
              AND n.processed_at IS NULL AND n.dead_at IS NULL
            ORDER BY n.id
            LIMIT p_limit
          ) n
          WHERE h.id = ANY(ids)))
        AND e.processed_at IS NULL AND e.dead_at IS NULL
        AND NOT EXISTS (
          SELECT 1 FROM position_events w
          WHERE w.position_id = e.position_id AND w.id < e.id AND w.available_at > now()
        )
      ORDER BY e.id
      LIMIT p_limit - cardinality(ids)
      FOR NO KEY UPDATE SKIP LOCKED
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
