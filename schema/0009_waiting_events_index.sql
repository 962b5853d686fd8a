-- Events waiting out a retry delay: a claim skips every later event of their positions
-- (they would fill each batch and hold back everything newer). Keyed on available_at so
-- the claim's "available_at > now()" is an index condition over a handful of rows, never a
-- filter over every pending event. Rows enter this index only when a handler fails or
-- defers (available_at is set by an UPDATE), never on the INSERT of the commit path, and
-- leave it when handled or parked.
CREATE INDEX idx_position_events_waiting ON position_events (available_at, position_id, id)
  WHERE processed_at IS NULL AND dead_at IS NULL AND available_at IS NOT NULL;
