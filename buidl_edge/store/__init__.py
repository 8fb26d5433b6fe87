"""The shared store: dedup claims, the inbox, and worker stats behind one interface."""
from buidl_edge.store.base import EdgeStore, Reply
from buidl_edge.store.memory import MemoryStore

__all__ = ["EdgeStore", "MemoryStore", "Reply"]
