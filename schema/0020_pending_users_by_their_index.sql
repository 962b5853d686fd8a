-- A backlog's other users are found by their index, whatever the statistics say.
--
-- The other users' step of outbox_claim_fair (schema/0016) finds the users with pending
-- events by a skip scan of idx_position_events_pending_user, one probe per user. Both that
-- index and idx_position_events_pending (by id) had the predicate "processed_at IS NULL
-- AND dead_at IS NULL", so the planner chose between them by its estimate of how many
-- events are pending. Where the statistics were taken while nothing was pending (a table of
-- handled events, analyzed), it estimates one row, and reads the pending index in id order
-- and sorts what it finds by user: every pending event, at each step of the skip scan, on
-- every full claim. The plans are made once per connection and kept until the table is
-- analyzed again, so a backlog drained that way pays in proportion to what is left of it.
-- Measured on the bench's backlog of 100,000 events (one user; auto_explain): 16-33 ms of
-- each claim's server time, 3.2 s of a 4.8 s drain, against under 0.1 ms by the index.
--
-- The index is made again with its own form of the predicate, num_nulls(processed_at,
-- dead_at) = 2 (the same rows), and the users and their oldest events are asked for in that
-- form: only that index's predicate is proven by it, so the by-id index cannot answer them
-- whatever the estimates (tests/integration/test_outbox.py). The other steps keep their
-- forms: the heads are read by idx_position_events_pending in id order, and the followers
-- and picks by forms that prove neither predicate (schema/0019). What is claimed, and in
-- which order, is unchanged.
--
-- The index is built while the migration holds its lock: writes to position_events wait for
-- the build (a scan of the table, as for schema/0016's).
DROP INDEX idx_position_events_pending_user;
CREATE INDEX idx_position_events_pending_user ON position_events (user_id, id)
  WHERE num_nulls(processed_at, dead_at) = 2;

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
  takers uuid[];  -- their users
  oldest bigint;  -- min_pending
BEGIN
  -- the oldest heads: pending, not waiting out a retry delay, first of their position
  SELECT coalesce(array_agg(l.id ORDER BY l.id), '{}'),
         coalesce(array_agg(l.position_id ORDER BY l.id), '{}'),
         coalesce(array_agg(l.user_id ORDER BY l.id), '{}')
  INTO ids, heads, takers
  FROM (
    SELECT e.id, e.position_id, e.user_id
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
  -- locked beyond the room are only held until this claim ends. "Pending" is written so
  -- that it proves no partial index's predicate: on a table never analyzed, the planner
  -- takes the pending ones for nearly empty, and would read idx_position_events_pending
  -- from the head on, filtering by position, for every head (seen with three workers:
  -- up to 800 ms a claim), instead of the position's own index
  IF cardinality(ids) > 0 AND cardinality(ids) < p_limit THEN
    ids := ids || ARRAY(
      SELECT f.id
      FROM unnest(ids, heads) AS h(id, position_id)
      CROSS JOIN LATERAL (
        SELECT n.id FROM position_events n
        WHERE n.position_id = h.position_id AND n.id > h.id
          AND coalesce(n.processed_at, n.dead_at) IS NULL
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
  -- second ...), up to p_others of them from up to p_others users; the users and their
  -- oldest events are read from idx_position_events_pending_user, whose predicate only
  -- the form num_nulls(...) = 2 proves (see the notes above)
  IF cardinality(ids) >= p_limit AND p_others > 0 THEN
    ids := ids || ARRAY(
      WITH RECURSIVE users AS (
        (SELECT e.user_id FROM position_events e
         WHERE num_nulls(e.processed_at, e.dead_at) = 2
         ORDER BY e.user_id LIMIT 1)
        UNION ALL
        SELECT (SELECT e.user_id FROM position_events e
                WHERE num_nulls(e.processed_at, e.dead_at) = 2 AND e.user_id > u.user_id
                ORDER BY e.user_id LIMIT 1)
        FROM users u
        WHERE u.user_id IS NOT NULL
      ),
      others AS (
        SELECT u.user_id FROM users u
        WHERE u.user_id IS NOT NULL
          -- the followers of a claim's heads are of the same users: its heads' suffice
          AND u.user_id NOT IN (SELECT unnest(takers))
        LIMIT p_others
      ),
      candidates AS (
        SELECT f.id, row_number() OVER (PARTITION BY o.user_id ORDER BY f.id) AS turn
        FROM others o
        CROSS JOIN LATERAL (
          SELECT e.id
          FROM position_events e
          WHERE e.user_id = o.user_id AND num_nulls(e.processed_at, e.dead_at) = 2
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
      SELECT k.id
      FROM (SELECT c.id FROM candidates c ORDER BY c.turn, c.id LIMIT p_others) c
      -- one probe of the primary key each (a subquery that locks is planned on its own,
      -- by its id), still pending when locked (rechecked on the newest row version). The
      -- test is written so that it proves neither partial index's predicate: on a small
      -- table the planner may take either for it, and read it whole for every id
      CROSS JOIN LATERAL (
        SELECT e.id FROM position_events e
        WHERE e.id = c.id AND coalesce(e.processed_at, e.dead_at) IS NULL
        FOR NO KEY UPDATE SKIP LOCKED
      ) k
    );
  END IF;

  -- min_pending of every row: the oldest pending event from the floor on, the first entry
  -- of idx_position_events_pending there
  oldest := (SELECT m.id FROM position_events m
             WHERE m.processed_at IS NULL AND m.dead_at IS NULL AND m.id >= p_floor
             ORDER BY m.id LIMIT 1);

  IF cardinality(ids) = 0 THEN
    -- nothing this claim may take: one row of NULLs (but min_pending) says that events are
    -- pending, available and not behind a retry delay all the same, so other claims hold
    -- them (or their positions' earlier events): the worker waits for a claim to end
    -- instead of claiming again at every notification
    RETURN QUERY
    SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
           NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::integer,
           NULL::bigint, NULL::boolean, NULL::boolean,
           oldest
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
         prev.id, prev.pending, prev.waiting, oldest
  FROM unnest(ids) AS c(id)
  -- one probe each: a subquery with a LIMIT is planned on its own, by its id
  CROSS JOIN LATERAL (SELECT r.* FROM position_events r WHERE r.id = c.id LIMIT 1) l
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

-- The worker's, not the users': PUBLIC (anon, authenticated) may not lock events.
REVOKE ALL ON FUNCTION outbox_claim_fair(bigint, integer, integer) FROM PUBLIC;
