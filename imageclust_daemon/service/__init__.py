"""The running service: the daemon, its scheduled jobs, the single-instance lock, the
systemd and launchd units, and the checks of doctor."""
