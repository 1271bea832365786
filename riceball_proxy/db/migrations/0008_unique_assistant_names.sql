-- Assistant names are unique, as provider names are, so that scripts and the CLI can name them.
-- Names already repeated keep their first holder and get " (2)", " (3)"... on the others.
UPDATE assistants AS a SET name = left(a.name, 190) || ' (' || repeated.n || ')'
FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n FROM assistants) AS repeated
WHERE a.id = repeated.id AND repeated.n > 1;
CREATE UNIQUE INDEX assistants_name ON assistants (name);
