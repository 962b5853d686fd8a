-- Queries of the exchange-account registry (worker/execution/accounts.py) and of the risk
-- check at entry (worker/execution/entry.py). Tables: schema/0013_exchange_accounts.sql.
-- The worker is the only role that reads secrets: sealed ciphertext, the inbox, or Vault.

-- name: acct_load
-- One account and where its secret is (never the plaintext: see acct_secret_*).
SELECT a.id, a.user_id, a.exchange, a.label, a.api_key, a.key_type, a.status,
       a.status_reason, a.key_version, a.secret_state, a.checked_at,
       s.ciphertext, s.key_id, s.vault_secret_id
FROM exchange_accounts a
LEFT JOIN exchange_account_secrets s ON s.account_id = a.id
WHERE a.id = %(account_id)s

-- name: acct_secret_vault
SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = %(vault_secret_id)s

-- name: acct_pending_inbox
-- Secrets waiting to be sealed (the unlogged inbox), oldest first.
SELECT i.account_id, i.api_secret, i.submitted_at, a.key_version
FROM exchange_account_secret_inbox i
JOIN exchange_accounts a ON a.id = i.account_id
ORDER BY i.submitted_at
LIMIT %(limit)s

-- name: acct_seal
-- Compare-and-set on the inbox row read (schema/0013): false when a rotation replaced it
-- meanwhile (the newer secret is sealed on the next pass) or another worker sealed it.
SELECT seal_exchange_account_secret(%(account_id)s, %(submitted_at)s, %(ciphertext)s,
                                    %(key_id)s)

-- name: acct_mark_lost
-- Secrets an unclean database shutdown emptied from the unlogged inbox before they were
-- sealed: the accounts become invalid with a reason the user can act on.
SELECT mark_lost_exchange_secrets()

-- name: acct_to_check
-- Accounts whose keys the worker has not checked since they were added, rotated or enabled,
-- and invalid ones due for another look.
SELECT id FROM exchange_accounts
WHERE secret_state <> 'pending'
  AND ((checked_at IS NULL AND status = 'active')
       OR (status = 'invalid' AND checked_at < now() - make_interval(secs => %(recheck_s)s)))
ORDER BY checked_at NULLS FIRST
LIMIT %(limit)s

-- name: acct_mark_checked
-- The outcome of a key check, for the key version that was checked (a rotation meanwhile
-- wins). An account the user disabled meanwhile stays disabled.
UPDATE exchange_accounts
SET status = CASE WHEN status = 'disabled' THEN 'disabled' ELSE %(status)s END,
    status_reason = CASE WHEN status = 'disabled' THEN status_reason ELSE %(reason)s END,
    checked_at = now(),
    notified_at = CASE WHEN %(status)s = 'invalid' AND status <> 'invalid' THEN NULL
                       ELSE notified_at END
WHERE id = %(account_id)s AND key_version = %(key_version)s
RETURNING status

-- name: acct_unnotified
-- Invalid accounts whose user has not been told yet.
SELECT id, user_id, label, exchange, status_reason, checked_at
FROM exchange_accounts
WHERE status = 'invalid' AND notified_at IS NULL
LIMIT %(limit)s

-- name: acct_mark_notified
UPDATE exchange_accounts SET notified_at = now()
WHERE id = %(account_id)s AND status = 'invalid'

-- name: acct_versions
-- The key version, status and last check of the accounts this worker has clients for.
SELECT id, key_version, status, checked_at FROM exchange_accounts WHERE id = ANY(%(ids)s)

-- name: risk_override
SELECT max_position_notional, max_open_positions, max_open_notional, allowed_symbols,
       short_selling
FROM user_risk_limits WHERE user_id = %(user_id)s

-- name: risk_lock_user
-- One entry of a user checked against the limits at a time, across workers, until commit.
SELECT pg_advisory_xact_lock(hashtextextended(%(user_id)s::text, 7367))

-- name: risk_lock_users
-- risk_lock_user for many users at once, in one order (two workers locking overlapping
-- sets never wait on each other in a cycle).
SELECT pg_advisory_xact_lock(hashtextextended(u, 7367))
FROM (SELECT DISTINCT unnest(%(user_ids)s::text[]) AS u ORDER BY 1) AS users

-- name: risk_overrides
-- risk_override for many users: one row per user that has one.
SELECT user_id, max_position_notional, max_open_positions, max_open_notional,
       allowed_symbols, short_selling
FROM user_risk_limits WHERE user_id = ANY(%(user_ids)s::uuid[])

-- name: risk_exposures
-- risk_exposure for many users at once, with each row's position id, user and kind (the
-- caller leaves out the position being checked); at most `limit` rows per user and kind.
SELECT id, user_id, live, symbol, entry_value, requested_quote, requested_quantity,
       limit_price
FROM (SELECT id, user_id, NOT coalesce(is_paper_trade, false) AS live, symbol, entry_value,
             requested_quote, requested_quantity, limit_price,
             row_number() OVER (PARTITION BY user_id, coalesce(is_paper_trade, false)) AS n
      FROM positions
      WHERE user_id = ANY(%(user_ids)s::uuid[]) AND status NOT IN ('closed', 'failed')) AS p
WHERE n <= %(limit)s

-- name: risk_exposure
-- The user's positions that are not final, this one apart, with what each is worth so far:
-- the filled entry value, else the requested quote, else the requested quantity (priced by
-- the caller at the limit or the market).
SELECT symbol, entry_value, requested_quote, requested_quantity, limit_price
FROM positions
WHERE user_id = %(user_id)s AND id <> %(position_id)s
  AND status NOT IN ('closed', 'failed')
  AND NOT coalesce(is_paper_trade, false) = %(live)s
LIMIT %(limit)s

-- name: acct_stale_seals
-- Secrets sealed with a key other than the worker's newest (POSITION_WORKER_SECRETS_KEY
-- rotated): sealed again, then the old key can go.
SELECT s.account_id, s.ciphertext, s.key_id, a.key_version
FROM exchange_account_secrets s
JOIN exchange_accounts a ON a.id = s.account_id
WHERE s.ciphertext IS NOT NULL AND s.key_id <> %(newest)s
LIMIT %(limit)s

-- name: acct_reseal
-- Compare-and-set: a rotation of the account's key meanwhile wins.
UPDATE exchange_account_secrets
SET ciphertext = %(ciphertext)s, key_id = %(key_id)s, sealed_at = now()
WHERE account_id = %(account_id)s AND ciphertext = %(old)s
