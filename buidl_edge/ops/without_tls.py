"""Import supervisor without the TLS module it never uses: about 5 MB of `run`'s RSS (issue 26).

supervisor's compat module imports xmlrpc.client, whose http.client imports `ssl` when it can
(for its HTTPSConnection): the ssl module and OpenSSL's libraries, in a process that speaks
XML-RPC on a unix socket only and makes no HTTPS call. An import that finds `sys.modules[name]`
set to None raises ImportError (the documented way to keep a module out), which http.client
takes as a Python built without TLS. The block lasts only for those imports, so a later real
user in the same process (redis for a rediss:// store behind the dyno's /readyz) imports ssl as
usual; only http.client and xmlrpc.client stay without HTTPS, which supervisord does not use.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

TLS_MODULE = "ssl"


@contextlib.contextmanager
def tls_left_out() -> Iterator[None]:
    """Imports inside the block find no ssl module; nothing changes when one is loaded already."""
    if TLS_MODULE in sys.modules:  # e.g. a test's own process: nothing left to save
        yield
        return
    sys.modules[TLS_MODULE] = None  # type: ignore[assignment]  # None blocks the import: see above
    try:
        yield
    finally:
        if sys.modules.get(TLS_MODULE, TLS_MODULE) is None:
            del sys.modules[TLS_MODULE]
