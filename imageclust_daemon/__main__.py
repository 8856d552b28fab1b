"""`python -m imageclust_daemon` is the `imageclust` command."""

from imageclust_daemon.cli import main

raise SystemExit(main())
