-- Limits on keys and on assistants (both apply; the tighter wins), prices on assistants, and the
-- cost of every call. NULL is "no limit" / "no price set".
ALTER TABLE api_keys
    ADD COLUMN rpm integer CHECK (rpm > 0),
    ADD COLUMN tpm integer CHECK (tpm > 0),
    ADD COLUMN max_parallel integer CHECK (max_parallel > 0),
    ADD COLUMN budget_usd numeric(16, 6) CHECK (budget_usd > 0),
    ADD COLUMN budget_tokens bigint CHECK (budget_tokens > 0),
    ADD COLUMN budget_period text NOT NULL DEFAULT 'month'
        CHECK (budget_period IN ('day', 'week', 'month', 'total'));

ALTER TABLE assistants
    ADD COLUMN rpm integer CHECK (rpm > 0),
    ADD COLUMN tpm integer CHECK (tpm > 0),
    ADD COLUMN max_parallel integer CHECK (max_parallel > 0),
    ADD COLUMN budget_usd numeric(16, 6) CHECK (budget_usd > 0),
    ADD COLUMN budget_tokens bigint CHECK (budget_tokens > 0),
    ADD COLUMN budget_period text NOT NULL DEFAULT 'month'
        CHECK (budget_period IN ('day', 'week', 'month', 'total')),
    -- USD per million tokens; cached input defaults to the input price.
    ADD COLUMN price_input numeric(16, 6) CHECK (price_input >= 0),
    ADD COLUMN price_output numeric(16, 6) CHECK (price_output >= 0),
    ADD COLUMN price_cached_input numeric(16, 6) CHECK (price_cached_input >= 0),
    ADD CONSTRAINT assistants_price_pair CHECK ((price_input IS NULL) = (price_output IS NULL));

-- NULL: the cost is not known (no price for the model, or no token counts).
ALTER TABLE usage_events ADD COLUMN cost_usd numeric(20, 10);

-- A key's limits are cached with it: changing them must reach every instance's cache.
DROP TRIGGER api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify
    AFTER INSERT OR DELETE OR UPDATE OF name, key_hash, prefix, assistant_ids, expires_at, revoked_at,
        rpm, tpm, max_parallel, budget_usd, budget_tokens, budget_period
    ON api_keys FOR EACH ROW EXECUTE FUNCTION riceball_notify_config_change();

-- Shared limit counters when there is no Redis (RICEBALL_REDIS_URL): one row per counter, locked
-- while a call is admitted or settled. Rows past expires_at are stale and are deleted in passing.
CREATE TABLE limit_counters (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX limit_counters_expires_at ON limit_counters (expires_at);
