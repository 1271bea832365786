-- Whether answers name the provider and model that served them (x-riceball-provider, -model). Off by
-- default: they tell third parties how the assistant is configured.
ALTER TABLE assistants ADD COLUMN expose_target boolean NOT NULL DEFAULT false;
