-- An assistant's default reasoning effort (a parameter like the others, lockable), automatic prompt
-- caching (off by default), the price of input written to a prompt cache, and a fallback target's
-- own prices (USD per million tokens; NULL: the assistant's for the same model, else genai-prices').
ALTER TABLE assistants
    ADD COLUMN reasoning_effort text
        CHECK (reasoning_effort IN ('none', 'minimal', 'low', 'medium', 'high', 'xhigh')),
    ADD COLUMN reasoning_effort_locked boolean NOT NULL DEFAULT false,
    ADD COLUMN auto_cache boolean NOT NULL DEFAULT false,
    ADD COLUMN price_cache_write numeric(16, 6) CHECK (price_cache_write >= 0);

ALTER TABLE assistant_targets
    ADD COLUMN price_input numeric(16, 6) CHECK (price_input >= 0),
    ADD COLUMN price_output numeric(16, 6) CHECK (price_output >= 0),
    ADD COLUMN price_cached_input numeric(16, 6) CHECK (price_cached_input >= 0),
    ADD COLUMN price_cache_write numeric(16, 6) CHECK (price_cache_write >= 0),
    ADD CONSTRAINT assistant_targets_price_pair CHECK ((price_input IS NULL) = (price_output IS NULL));
