-- Claims are held by row locks, not written leases.
--
-- A worker claims a batch with SELECT ... FOR NO KEY UPDATE SKIP LOCKED inside a
-- transaction that stays open while the batch is published and handled, and settles it
-- (processed, failed, deferred, dead) in that same transaction. The locks are the lease: a
-- worker that dies loses its connection and its locks at once, and a hung one is cut off by
-- idle_in_transaction_session_timeout (pipeline.lease_seconds). One write per event instead
-- of two (lease, then processed), and nothing to expire.
--
-- Per-position order is checked against each event's predecessor (same position, next
-- lower id) through idx_position_events_position: an event is handled only when its
-- predecessor is handled, dead, or in the same batch before it.
DROP INDEX idx_position_events_in_flight;
ALTER TABLE position_events DROP COLUMN lease_until, DROP COLUMN lease_owner;
