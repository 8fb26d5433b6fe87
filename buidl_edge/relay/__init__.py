"""Relay mode: run an existing HTTP-mode Slack app behind buidl-edge, unchanged.

Each envelope, claimed and deduplicated as always, goes to the app at BUIDL_RELAY_URL as the very
request Slack would have sent it in HTTP mode, signed with the app's Signing Secret:

- `request`: the body and headers of that request (no I/O);
- `client`: one POST to the backend, where it may go, and how it ended;
- `relay`: what the dispatcher calls instead of running an EdgeApp (an answer within the ack
  deadline for envelopes that take one), and the deliveries that drain the inbox to the backend,
  durably, in arrival order per channel, on the shared delivery loop (delivery/loop.py).
"""
