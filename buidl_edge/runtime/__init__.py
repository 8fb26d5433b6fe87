"""One worker process: build, run, drain; the gevent patch, the collector, the hub watch, exit codes."""
