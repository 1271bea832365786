-- Names of keys in force are unique, like providers' and assistants': a script or an admin can name
-- one. A revoked key lets go of its name, so a key can be replaced by a new one of the same name.
-- Names already repeated among keys in force keep their first holder and get " (2)"... on the others.
UPDATE api_keys AS k SET name = left(k.name, 190) || ' (' || repeated.n || ')'
FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n
      FROM api_keys WHERE revoked_at IS NULL) AS repeated
WHERE k.id = repeated.id AND repeated.n > 1;
CREATE UNIQUE INDEX api_keys_name_in_force ON api_keys (name) WHERE revoked_at IS NULL;
