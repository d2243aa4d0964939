"""The runtime: a site's parts as processes — the dataflows' run, the supervisor, locks, lag and health."""
