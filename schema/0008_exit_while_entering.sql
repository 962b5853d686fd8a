-- A full exit may be requested while the entry is still working (`submitting`, e.g. a
-- resting limit entry that is partly filled): the worker cancels the entry, the position
-- opens with what filled, and the exit sells what is held (nothing filled: the position
-- fails and the request is done). A partial exit still needs an open or monitoring
-- position: what is held is not settled before the entry is.

CREATE OR REPLACE FUNCTION request_position_exit(
  p_position_id uuid, p_quantity numeric DEFAULT NULL, p_reason text DEFAULT 'user')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pos positions := _lock_position_for_request(p_position_id);
  req uuid;
BEGIN
  PERFORM _check_request_reason(p_reason);
  IF pos.status = 'submitting' AND p_quantity IS NOT NULL THEN
    RAISE EXCEPTION 'position % is submitting: only a full exit (no quantity) can be requested '
      'before the entry completes', p_position_id USING ERRCODE = 'PW012';
  END IF;
  IF pos.status NOT IN ('submitting', 'open', 'monitoring') THEN
    RAISE EXCEPTION 'position % is %: only a submitting, open or monitoring position can be '
      'exited', p_position_id, pos.status USING ERRCODE = 'PW012';
  END IF;
  IF p_quantity IS NOT NULL AND p_quantity <= 0 THEN
    RAISE EXCEPTION 'exit quantity must be positive, got %', p_quantity USING ERRCODE = 'PW013';
  END IF;
  IF p_quantity IS NOT NULL AND p_quantity > coalesce(pos.held_quantity, 0) THEN
    RAISE EXCEPTION 'exit quantity % is more than the % held', p_quantity,
      coalesce(pos.held_quantity, 0) USING ERRCODE = 'PW013';
  END IF;
  IF EXISTS (SELECT 1 FROM position_requests WHERE position_id = p_position_id
             AND kind = 'exit' AND status = 'pending') THEN
    RAISE EXCEPTION 'position % already has an exit pending', p_position_id
      USING ERRCODE = 'PW014';
  END IF;
  INSERT INTO position_requests (position_id, user_id, kind, quantity, reason)
  VALUES (p_position_id, pos.user_id, 'exit',
          CASE WHEN p_quantity = pos.held_quantity THEN NULL ELSE p_quantity END, p_reason)
  RETURNING id INTO req;
  RETURN req;
END;
$$;
