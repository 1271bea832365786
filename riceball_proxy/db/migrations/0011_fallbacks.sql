-- Fallback targets of an assistant, tried in order when its provider fails before answering: a JSON
-- list of {"provider_id", "model", "weight", "priority", "params"}; and the bounds on trying.
ALTER TABLE assistants
    ADD COLUMN fallbacks jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(fallbacks) = 'array'),
    ADD COLUMN deadline double precision NOT NULL DEFAULT 60 CHECK (deadline > 0 AND deadline <= 3600),
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 20);

-- How many upstream calls a call took (1 when the first target answered).
ALTER TABLE usage_events ADD COLUMN attempts integer;
