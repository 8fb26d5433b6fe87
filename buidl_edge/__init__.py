"""buidl-edge: the always-on Slack Socket Mode edge of Buidl."""
from typing import Any

__version__ = "0.1.0"
__all__ = ["Context", "EdgeApp"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import buidl_edge` stays light and gevent patching can come first.
    if name in __all__:
        from buidl_edge.api import app

        return getattr(app, name)
    raise AttributeError(name)
