-- NaN is a valid numeric in PostgreSQL, greater than every number ('NaN' > 0 is true), so
-- the "> 0" checks let it through. No amount of this project may be NaN. (Infinity cannot
-- be stored in a DECIMAL with a precision.) A NULL still passes: NULL <> 'NaN' is NULL.

ALTER TABLE positions ADD CONSTRAINT positions_amounts_not_nan CHECK (
  requested_quantity <> 'NaN' AND requested_quote <> 'NaN' AND limit_price <> 'NaN'
  AND stop_loss_price <> 'NaN' AND take_profit_price <> 'NaN' AND max_loss_usdt <> 'NaN'
  AND entry_price <> 'NaN' AND entry_quantity <> 'NaN' AND entry_value <> 'NaN'
  AND exit_price <> 'NaN' AND exit_quantity <> 'NaN' AND exit_value <> 'NaN'
  AND realized_pnl <> 'NaN' AND realized_pnl_percent <> 'NaN' AND fees_paid <> 'NaN'
  AND held_quantity <> 'NaN' AND entry_cost <> 'NaN');

ALTER TABLE orders ADD CONSTRAINT orders_amounts_not_nan CHECK (
  quantity <> 'NaN' AND filled_quantity <> 'NaN' AND price <> 'NaN' AND stop_price <> 'NaN'
  AND quote_quantity <> 'NaN' AND avg_fill_price <> 'NaN' AND total_value <> 'NaN'
  AND fees <> 'NaN');

ALTER TABLE trades ADD CONSTRAINT trades_amounts_not_nan CHECK (
  price <> 'NaN' AND quantity <> 'NaN' AND value <> 'NaN' AND fee <> 'NaN'
  AND fee_quote <> 'NaN');

ALTER TABLE position_requests ADD CONSTRAINT position_requests_amounts_not_nan CHECK (
  quantity <> 'NaN' AND quote_quantity <> 'NaN');
