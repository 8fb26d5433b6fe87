"""Import supervisor without OpenSSL, which it never uses: about 4.7 MB of `run`'s RSS (issue 26).

supervisord's imports would load both of Python's OpenSSL bindings: `ssl` (supervisor.compat
imports xmlrpc.client, whose http.client takes ssl when it can, for its HTTPSConnection) and
`_hashlib` (hashlib's fast path, for the sha1 and md5 supervisor imports), and with them
libssl and libcrypto, in a process that speaks XML-RPC on a unix socket only and makes no HTTPS
call. An import that finds `sys.modules[name]` set to None raises ImportError (the documented
way to keep a module out), which http.client takes as a Python built without TLS and hashlib
as one without OpenSSL: it uses its built-in sha1 and md5. The block lasts only for those
imports, so a later real user in the same process (redis for a rediss:// store) imports ssl as
usual; only http.client and xmlrpc.client stay without HTTPS, which supervisord does not use.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

OPENSSL_BINDINGS = ("ssl", "_hashlib")


@contextlib.contextmanager
def openssl_left_out() -> Iterator[None]:
    """Imports inside the block find neither binding; one already loaded stays as it is."""
    blocked = [name for name in OPENSSL_BINDINGS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # None blocks the import: see above
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, name) is None:
                del sys.modules[name]
