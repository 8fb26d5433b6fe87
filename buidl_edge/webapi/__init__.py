"""The edge's own Slack Web API calls (auth.test, apps.connections.open, chat.postMessage)."""
