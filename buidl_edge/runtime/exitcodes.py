"""A worker's exit codes, the contract between the worker, supervisord's config and `run`.

Imports nothing, so the unpatched `run` and the gevent worker read the same numbers.
"""

EXIT_OK = 0  # drained after SIGTERM: supervisord (exitcodes=0) leaves it stopped
EXIT_CRASH = 1  # a bug: supervisord (autorestart=unexpected) starts the worker again
# A stop that restarting cannot fix (link_disabled, a refused token, and any failure before the
# worker is up: config, app import, store): supervisord must not respawn, `run` stops the stack.
EXIT_FATAL = 3
