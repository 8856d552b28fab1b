"""`python -m imageclust_daemon` is the `imageclust` command."""

from imageclust_daemon.cli.commands import main

raise SystemExit(main())
