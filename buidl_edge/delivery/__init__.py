"""Outbound: one delivery loop (loop), the reply outbox on it (outbox), and chat.postMessage's rate
limits (ratelimit). The relay (relay/) delivers on the same loop."""
