"""``python -m riceball_proxy`` runs the ``riceball`` command."""
from riceball_proxy.cli.main import main

raise SystemExit(main())
