"""Outbound: the reply outbox and chat.postMessage's rate limits."""
