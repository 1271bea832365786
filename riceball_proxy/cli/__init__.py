"""The ``riceball`` command line: ``main`` parses the arguments and runs the command.

One module per noun (``providers``, ``assistants``, ``keys``, ``admins``, ``config`` for apply and
export, ``serve``, ``plugins``), each adding its commands (``add_commands``) and doing them; what they
share is in ``output`` (errors, ``--json``, tables, the database), ``options`` (argument types, the
limit options) and ``lookup`` (what a command names, by id or by name). A noun module imports only
those three, never another noun.
"""
