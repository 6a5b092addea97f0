"""One router per topic (as Frigate's `frigate/api/*.py`): each file's `router(daemon, auth)`
returns its routes, which use the daemon's public surface only."""
