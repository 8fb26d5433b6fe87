"""Example apps: `handlers` is the one README's "Writing handlers" shows, line for line."""
