-- An assistant's fallback targets in a table of their own, so that the database itself refuses a target
-- whose provider does not exist (a JSON list could hold a provider id long deleted, and every call that
-- reached it failed). A provider a target uses cannot be deleted; an assistant's targets go with it.
CREATE TABLE assistant_targets (
    assistant_id  uuid NOT NULL REFERENCES assistants (id) ON DELETE CASCADE,
    position      integer NOT NULL CHECK (position >= 0),
    provider_id   bigint NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    model         text NOT NULL CHECK (length(model) BETWEEN 1 AND 300),
    weight        integer NOT NULL DEFAULT 1 CHECK (weight >= 1),
    priority      integer NOT NULL DEFAULT 1 CHECK (priority >= 0),
    params        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    PRIMARY KEY (assistant_id, position),
    UNIQUE (assistant_id, provider_id, model)
);
CREATE INDEX assistant_targets_provider_id ON assistant_targets (provider_id);

-- The targets the JSON lists held, in their order; one whose provider is gone is left out (it could
-- never serve a call).
INSERT INTO assistant_targets (assistant_id, position, provider_id, model, weight, priority, params)
SELECT a.id, (f.n - 1)::integer, (f.target ->> 'provider_id')::bigint, f.target ->> 'model',
       coalesce((f.target ->> 'weight')::integer, 1), coalesce((f.target ->> 'priority')::integer, 1),
       coalesce(f.target -> 'params', '{}')
FROM assistants a, jsonb_array_elements(a.fallbacks) WITH ORDINALITY AS f(target, n)
WHERE EXISTS (SELECT 1 FROM providers p WHERE p.id = (f.target ->> 'provider_id')::bigint)
ON CONFLICT DO NOTHING;

ALTER TABLE assistants DROP COLUMN fallbacks;

-- A change of an assistant's targets changes what the caches hold for it.
CREATE FUNCTION riceball_notify_target_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('riceball_config', 'assistants:' ||
                      CASE WHEN TG_OP = 'DELETE' THEN OLD.assistant_id ELSE NEW.assistant_id END::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER assistant_targets_notify
    AFTER INSERT OR UPDATE OR DELETE ON assistant_targets
    FOR EACH ROW EXECUTE FUNCTION riceball_notify_target_change();
