"""Operating the deployable: `run` (becomes supervisord), its watch, status, state files, tokens."""
