"""Configuration as code: providers, assistants and API keys declared in a file.

``riceball apply -f FILE`` makes the database match the file (:mod:`.apply`), ``riceball export`` writes
the database out as one (:mod:`.export`), and ``RICEBALL_CONFIG_FILE`` applies one whenever the gateway
starts. The format and its checks are in :mod:`.schema`; docs/configuration.md is the user's guide.
"""
