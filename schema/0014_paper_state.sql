-- Paper trading state: each user's paper balances and paper orders (issue 21).
--
-- The worker (the owner) writes both tables; any replica fills a resting paper order by
-- claiming its row (SELECT ... FOR UPDATE SKIP LOCKED, worker/db/paper.sql), and a balance
-- never goes below zero (the CHECKs are the last line: a change that would overdraw an
-- asset fails and its whole transaction rolls back). End users read their own rows through
-- row-level security and never write them (R__privileges.sql grants SELECT only).
--
-- Amounts are NUMERIC without a scale: a hold is price x quantity, which may need more than
-- 8 places, and a balance must come out exact (start - fees +/- PnL).

CREATE TABLE paper_balances (
  user_id    UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  asset      TEXT NOT NULL CHECK (asset ~ '^[A-Z0-9]{1,20}$'),
  free       NUMERIC NOT NULL DEFAULT 0 CHECK (free >= 0 AND free <> 'NaN'),
  locked     NUMERIC NOT NULL DEFAULT 0 CHECK (locked >= 0 AND locked <> 'NaN'),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, asset)
);

CREATE TABLE paper_orders (
  id                 TEXT PRIMARY KEY,  -- the exchange order id the worker records
  seq                BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- oldest first
  user_id            UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  symbol             TEXT NOT NULL,
  client_order_id    TEXT NOT NULL,
  side               TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
  type               TEXT NOT NULL CHECK (type IN ('market', 'limit', 'stop_loss', 'take_profit')),
  quote_quantity     NUMERIC,           -- a market order by quote, as requested
  quantity           NUMERIC NOT NULL CHECK (quantity > 0 AND quantity <> 'NaN'),
  price              NUMERIC,
  stop_price         NUMERIC,
  status             TEXT NOT NULL,
  triggered          BOOLEAN NOT NULL,
  hold_asset         TEXT NOT NULL,
  locked             NUMERIC NOT NULL CHECK (locked >= 0 AND locked <> 'NaN'),
  fills              JSONB NOT NULL DEFAULT '[]',
  time_ms            BIGINT NOT NULL,
  update_ms          BIGINT NOT NULL DEFAULT 0,
  created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Binance's rule: a client order id is unique among the account's open orders.
CREATE UNIQUE INDEX paper_orders_open_client_id ON paper_orders (user_id, client_order_id)
  WHERE status IN ('NEW', 'PARTIALLY_FILLED');
-- what a price move may fill
CREATE INDEX paper_orders_open_by_symbol ON paper_orders (symbol, seq)
  WHERE status IN ('NEW', 'PARTIALLY_FILLED');
-- lookups by client order id (the latest first)
CREATE INDEX paper_orders_by_client_id ON paper_orders (user_id, symbol, client_order_id, seq);

ALTER TABLE paper_balances ENABLE ROW LEVEL SECURITY;
ALTER TABLE paper_orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY paper_balances_select_own ON paper_balances FOR SELECT
  USING (auth.uid() = user_id);
CREATE POLICY paper_orders_select_own ON paper_orders FOR SELECT
  USING (auth.uid() = user_id);
