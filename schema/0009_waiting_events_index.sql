-- Events waiting out a retry delay, by position: a claim skips every later event of such a
-- position (they would fill each batch and hold back everything newer). Rows enter this
-- index only when a handler fails or defers (available_at is set by an UPDATE), never on
-- the INSERT of the commit path, and leave it when handled or parked.
CREATE INDEX idx_position_events_waiting ON position_events (position_id, id)
  WHERE processed_at IS NULL AND dead_at IS NULL AND available_at IS NOT NULL;
