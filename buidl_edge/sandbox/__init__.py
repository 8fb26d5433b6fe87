"""The bundled Slack simulator, and what only the demo, tests and benchmarks use."""
