-- The first schema: admins, providers, assistants, API keys, usage events and the playground's
-- conversations. Every timestamp is timestamptz; ids that appear in URLs are UUIDs.

CREATE TABLE admins (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 150),
    password_hash   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz
);

CREATE TABLE providers (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    type                text NOT NULL,
    base_url            text NOT NULL CHECK (base_url ~ '^https?://'),
    -- Fernet ciphertext of the upstream API key; never the key itself.
    api_key_encrypted   bytea,
    connect_timeout     double precision NOT NULL DEFAULT 10 CHECK (connect_timeout > 0),
    read_timeout        double precision NOT NULL DEFAULT 300 CHECK (read_timeout > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Each model parameter is a nullable column (NULL: the assistant sets none) with a lock flag
-- (locked: the assistant's value wins over the client's).
CREATE TABLE assistants (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    provider_id                 bigint NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    model                       text NOT NULL CHECK (length(model) BETWEEN 1 AND 300),
    system_prompt               text NOT NULL DEFAULT '',
    temperature                 double precision CHECK (temperature BETWEEN 0 AND 2),
    temperature_locked          boolean NOT NULL DEFAULT false,
    top_p                       double precision CHECK (top_p BETWEEN 0 AND 1),
    top_p_locked                boolean NOT NULL DEFAULT false,
    max_tokens                  integer CHECK (max_tokens > 0),
    max_tokens_locked           boolean NOT NULL DEFAULT false,
    presence_penalty            double precision CHECK (presence_penalty BETWEEN -2 AND 2),
    presence_penalty_locked     boolean NOT NULL DEFAULT false,
    frequency_penalty           double precision CHECK (frequency_penalty BETWEEN -2 AND 2),
    frequency_penalty_locked    boolean NOT NULL DEFAULT false,
    seed                        bigint,
    seed_locked                 boolean NOT NULL DEFAULT false,
    stop                        jsonb CHECK (stop IS NULL OR jsonb_typeof(stop) = 'array'),
    stop_locked                 boolean NOT NULL DEFAULT false,
    -- Provider-specific parameters sent as they are (defaults, like the columns above).
    extra_params                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra_params) = 'object'),
    allow_client_system         boolean NOT NULL DEFAULT true,
    enabled                     boolean NOT NULL DEFAULT true,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assistants_provider_id ON assistants (provider_id);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash        bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix          text NOT NULL,
    -- NULL: every assistant; otherwise only these (an empty array allows none).
    assistant_ids   uuid[],
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);

CREATE TABLE usage_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at          timestamptz NOT NULL DEFAULT now(),
    request_id          text NOT NULL,
    api_key_id          uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    assistant_id        uuid REFERENCES assistants (id) ON DELETE SET NULL,
    provider_id         bigint REFERENCES providers (id) ON DELETE SET NULL,
    upstream_model      text,
    stream              boolean NOT NULL DEFAULT false,
    status              integer NOT NULL,
    error_type          text,
    prompt_tokens       integer,
    completion_tokens   integer,
    total_tokens        integer,
    cached_tokens       integer,
    reasoning_tokens    integer,
    latency_ms          double precision,
    ttft_ms             double precision,
    client_addr         inet
);
CREATE INDEX usage_events_created_at ON usage_events (created_at);
CREATE INDEX usage_events_assistant ON usage_events (assistant_id, created_at);
CREATE INDEX usage_events_api_key ON usage_events (api_key_id, created_at);

-- The admin playground's saved chats; the API never reads or writes these.
CREATE TABLE conversations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    admin_id        bigint REFERENCES admins (id) ON DELETE CASCADE,
    assistant_id    uuid REFERENCES assistants (id) ON DELETE SET NULL,
    title           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id     uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role                text NOT NULL CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool')),
    content             jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
