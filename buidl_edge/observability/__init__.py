"""Logs, redaction, Sentry, Prometheus metrics, the health endpoint."""
