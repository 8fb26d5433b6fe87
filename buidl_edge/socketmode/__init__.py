"""Socket Mode: WebSocket frames and protocol (sans-I/O), one link, one connection slot."""
