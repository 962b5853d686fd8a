-- Core tables: traders and signals (minimal, only where absent: the platform may own them),
-- then positions, orders and trades exactly as the spec
-- (../shared/spec/positions-schema-and-lifecycle.md) plus the columns marked EXTENSION,
-- which later parts of the worker need (documented in README.md, "Schema").

CREATE TABLE IF NOT EXISTS traders (
  id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id    UUID NOT NULL REFERENCES auth.users(id),
  name       TEXT NOT NULL DEFAULT 'trader',
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS signals (
  id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id    UUID NOT NULL REFERENCES auth.users(id),
  trader_id  UUID REFERENCES traders(id),
  symbol     VARCHAR(20),
  status     VARCHAR(20) NOT NULL DEFAULT 'pending' CHECK (status IN
    ('pending', 'active', 'in_position', 'completed', 'cancelled', 'expired', 'failed')),
  closed_at  TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE positions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES auth.users(id),
  trader_id UUID NOT NULL REFERENCES traders(id),
  signal_id UUID NOT NULL REFERENCES signals(id),

  -- Position details
  symbol VARCHAR(20) NOT NULL,
  side VARCHAR(10) NOT NULL CHECK (side IN ('long', 'short')),
  status VARCHAR(20) NOT NULL CHECK (status IN
    ('created', 'submitting', 'open', 'monitoring', 'closing', 'closed', 'failed')),

  -- Entry details
  entry_price DECIMAL(20, 8),
  entry_quantity DECIMAL(20, 8),
  entry_value DECIMAL(20, 8), -- USDT value at entry
  entry_time TIMESTAMPTZ,
  entry_order_id VARCHAR(100), -- Binance order ID

  -- Exit details
  exit_price DECIMAL(20, 8),
  exit_quantity DECIMAL(20, 8),
  exit_value DECIMAL(20, 8),
  exit_time TIMESTAMPTZ,
  exit_order_id VARCHAR(100),

  -- PnL
  realized_pnl DECIMAL(20, 8), -- Final PnL in USDT
  realized_pnl_percent DECIMAL(10, 4), -- % return
  fees_paid DECIMAL(20, 8), -- Total fees (entry + exit)

  -- Risk management
  stop_loss_price DECIMAL(20, 8),
  take_profit_price DECIMAL(20, 8),
  max_loss_usdt DECIMAL(20, 8), -- Risk limit for this position

  -- Metadata
  is_paper_trade BOOLEAN DEFAULT false,
  failure_reason TEXT,
  metadata JSONB, -- Flexible storage for additional data

  created_at TIMESTAMPTZ DEFAULT NOW(),
  updated_at TIMESTAMPTZ DEFAULT NOW(),

  -- EXTENSION: what the entry asks for (the spec's entry_* columns hold what was filled).
  requested_quantity DECIMAL(20, 8), -- base quantity to buy/sell at entry
  requested_quote DECIMAL(20, 8),    -- or: quote (USDT) value to spend at entry
  limit_price DECIMAL(20, 8),        -- entry limit price; NULL = market
  -- EXTENSION: running figures for scale-in/out, kept by the worker from the fills.
  held_quantity DECIMAL(20, 8),      -- base quantity held now, net of base-asset fees
  entry_cost DECIMAL(20, 8),         -- quote paid for entries incl. entry fees (PnL % base)
  close_reason VARCHAR(20),          -- who/what asked for the exit (user, ai, stop_loss, ...)

  CONSTRAINT positions_symbol_format CHECK (symbol ~ '^[A-Z0-9]{2,20}$'),
  CONSTRAINT positions_entry_request CHECK (
    (requested_quantity IS NULL OR requested_quantity > 0)
    AND (requested_quote IS NULL OR requested_quote > 0)
    AND (limit_price IS NULL OR limit_price > 0)),
  CONSTRAINT positions_amounts_nonnegative CHECK (
    coalesce(entry_price, 0) >= 0 AND coalesce(entry_quantity, 0) >= 0
    AND coalesce(entry_value, 0) >= 0 AND coalesce(exit_price, 0) >= 0
    AND coalesce(exit_quantity, 0) >= 0 AND coalesce(exit_value, 0) >= 0
    AND coalesce(fees_paid, 0) >= 0 AND coalesce(held_quantity, 0) >= 0
    AND coalesce(entry_cost, 0) >= 0),
  CONSTRAINT positions_risk_positive CHECK (
    (stop_loss_price IS NULL OR stop_loss_price > 0)
    AND (take_profit_price IS NULL OR take_profit_price > 0)
    AND (max_loss_usdt IS NULL OR max_loss_usdt > 0))
);

CREATE INDEX idx_positions_user_id ON positions(user_id);
CREATE INDEX idx_positions_trader_id ON positions(trader_id);
CREATE INDEX idx_positions_signal_id ON positions(signal_id);
CREATE INDEX idx_positions_status ON positions(status);
CREATE INDEX idx_positions_symbol ON positions(symbol);
CREATE INDEX idx_positions_created_at ON positions(created_at DESC);

CREATE TABLE orders (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  position_id UUID NOT NULL REFERENCES positions(id),
  user_id UUID NOT NULL REFERENCES auth.users(id),

  -- Order details
  binance_order_id VARCHAR(100), -- Exchange order ID
  client_order_id VARCHAR(100), -- Our tracking ID
  symbol VARCHAR(20) NOT NULL,
  side VARCHAR(10) NOT NULL CHECK (side IN ('buy', 'sell')),
  type VARCHAR(20) NOT NULL CHECK (type IN ('market', 'limit', 'stop_loss', 'take_profit')),

  -- Quantities
  quantity DECIMAL(20, 8) NOT NULL,
  filled_quantity DECIMAL(20, 8) DEFAULT 0,
  price DECIMAL(20, 8), -- Limit price (null for market)

  -- Status
  status VARCHAR(20) NOT NULL CHECK (status IN
    ('created', 'submitted', 'partially_filled', 'filled', 'cancelled', 'failed')),

  -- Execution details
  avg_fill_price DECIMAL(20, 8),
  total_value DECIMAL(20, 8), -- filled_quantity * avg_fill_price
  fees DECIMAL(20, 8),

  -- Metadata
  is_paper_trade BOOLEAN DEFAULT false,
  error_message TEXT,
  raw_response JSONB, -- Full exchange response

  submitted_at TIMESTAMPTZ,
  filled_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ DEFAULT NOW(),
  updated_at TIMESTAMPTZ DEFAULT NOW(),

  -- EXTENSION: why the order exists, and what the exchange last said of it.
  purpose VARCHAR(20) NOT NULL DEFAULT 'entry' CHECK (purpose IN
    ('entry', 'exit', 'scale_in', 'scale_out', 'stop_loss', 'take_profit')),
  quote_quantity DECIMAL(20, 8),   -- entry by quote value (Binance quoteOrderQty)
  stop_price DECIMAL(20, 8),       -- trigger price of stop_loss / take_profit orders
  exchange_status VARCHAR(30),     -- the exchange's own status word (NEW, EXPIRED, ...)

  CONSTRAINT orders_amounts CHECK (
    quantity > 0 AND coalesce(filled_quantity, 0) >= 0
    AND (price IS NULL OR price > 0) AND (stop_price IS NULL OR stop_price > 0)
    AND (quote_quantity IS NULL OR quote_quantity > 0)
    AND coalesce(fees, 0) >= 0),
  CONSTRAINT orders_client_order_id_format CHECK (
    client_order_id IS NULL OR client_order_id ~ '^[a-zA-Z0-9_-]{1,36}$')
);

CREATE INDEX idx_orders_position_id ON orders(position_id);
CREATE INDEX idx_orders_user_id ON orders(user_id);
CREATE INDEX idx_orders_binance_order_id ON orders(binance_order_id);
CREATE INDEX idx_orders_status ON orders(status);
CREATE INDEX idx_orders_created_at ON orders(created_at DESC);
-- EXTENSION: one exchange order per intent: a client order id is never reused.
CREATE UNIQUE INDEX uq_orders_client_order_id ON orders(client_order_id);

CREATE TABLE trades (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id UUID NOT NULL REFERENCES orders(id),
  position_id UUID NOT NULL REFERENCES positions(id),

  -- Trade details
  binance_trade_id VARCHAR(100),
  symbol VARCHAR(20) NOT NULL,
  side VARCHAR(10) NOT NULL,

  -- Execution
  price DECIMAL(20, 8) NOT NULL,
  quantity DECIMAL(20, 8) NOT NULL,
  value DECIMAL(20, 8) NOT NULL, -- price * quantity
  fee DECIMAL(20, 8),
  fee_asset VARCHAR(10),

  -- Metadata
  is_paper_trade BOOLEAN DEFAULT false,
  executed_at TIMESTAMPTZ NOT NULL,
  created_at TIMESTAMPTZ DEFAULT NOW(),

  -- EXTENSION: the fee's value in quote at this fill's own time (never revalued).
  fee_quote DECIMAL(20, 8),

  CONSTRAINT trades_side CHECK (side IN ('buy', 'sell')),
  CONSTRAINT trades_amounts CHECK (
    price > 0 AND quantity > 0 AND value >= 0
    AND coalesce(fee, 0) >= 0 AND coalesce(fee_quote, 0) >= 0)
);

CREATE INDEX idx_trades_order_id ON trades(order_id);
CREATE INDEX idx_trades_position_id ON trades(position_id);
CREATE INDEX idx_trades_executed_at ON trades(executed_at DESC);
-- EXTENSION: every exchange fill recorded once.
CREATE UNIQUE INDEX uq_trades_order_trade ON trades(order_id, binance_trade_id);
