-- Every change to keys, assistants or providers notifies channel riceball_config with
-- '<table>:<id>', so that each gateway instance drops its cached copy at once, whoever wrote.

CREATE FUNCTION riceball_notify_config_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed_id text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed_id := OLD.id::text;
    ELSE
        changed_id := NEW.id::text;
    END IF;
    PERFORM pg_notify('riceball_config', TG_TABLE_NAME || ':' || changed_id);
    RETURN NULL;
END
$$;

-- last_used_at is written often and changes nothing a cache holds: it does not notify.
CREATE TRIGGER api_keys_notify
    AFTER INSERT OR DELETE OR UPDATE OF name, key_hash, prefix, assistant_ids, expires_at, revoked_at
    ON api_keys FOR EACH ROW EXECUTE FUNCTION riceball_notify_config_change();

CREATE TRIGGER assistants_notify
    AFTER INSERT OR UPDATE OR DELETE ON assistants
    FOR EACH ROW EXECUTE FUNCTION riceball_notify_config_change();

CREATE TRIGGER providers_notify
    AFTER INSERT OR UPDATE OR DELETE ON providers
    FOR EACH ROW EXECUTE FUNCTION riceball_notify_config_change();
