"""`run` (the whole stack under supervisord, the Procfile command) and `worker` (one process)."""
from __future__ import annotations

import sys

from buidl_edge.cli.base import app_option, cli, connections_option, processes_option, relay_option
from buidl_edge.config import SLACK_MAX_CONNECTIONS, load_settings

SIZING_RULE = (f"each process holds its connections plus one spare for a refresh: "
               f"processes x (connections + 1) <= {SLACK_MAX_CONNECTIONS}")


@cli.command()
@connections_option
@app_option
@relay_option
def worker(connections: int | None, app_spec: str | None, relay_url: str | None) -> None:
    """Run one worker process: connections, handlers and reply sender, until SIGTERM.

    A worker that cannot start (config, app import, store) says why in one line and exits 3.
    """
    from buidl_edge.cli.worker_entry import start_worker

    sys.exit(start_worker(connections=connections, app_spec=app_spec, relay_url=relay_url))


@cli.command(epilog=f"Sizing: {SIZING_RULE}.")
@processes_option
@connections_option
@app_option
@relay_option
def run(processes: int | None, connections: int | None, app_spec: str | None, relay_url: str | None) -> None:
    """Run the whole stack under supervisord in the foreground (the Procfile command).

    Renders the supervisord template shipped in the package (or ./deploy/supervisord.conf.tmpl,
    when there is one) into BUIDL_STATE_DIR, then becomes supervisord (exec: the same pid, no
    parent left watching), which starts the workers and keeps them alive. Exits non-zero with the
    worker's reason when one stops for good (a worker that cannot start, link_disabled, a refused
    token).
    """
    from buidl_edge.ops.stack import run_stack

    sys.exit(run_stack(load_settings(processes=processes, connections=connections, app_spec=app_spec,
                                     relay_url=relay_url)))
