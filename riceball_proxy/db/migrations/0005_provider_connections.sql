-- Each provider has its own bound on upstream calls at once, and on how long a call waits for one
-- of them, so that one slow or hanging provider can never hold up the others.
ALTER TABLE providers
    ADD COLUMN max_connections integer NOT NULL DEFAULT 1000 CHECK (max_connections BETWEEN 1 AND 100000),
    ADD COLUMN queue_timeout double precision NOT NULL DEFAULT 10 CHECK (queue_timeout BETWEEN 0 AND 3600);
