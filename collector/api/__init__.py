"""The HTTP API of the daemon (issue 17 §1): FastAPI on uvicorn, in the daemon's loop.

:mod:`.server` starts it (:class:`~collector.api.server.ApiServer`), :mod:`.app` builds the
application from routers (one module a concern: :mod:`.reads`, :mod:`.commands`,
:mod:`.ledger`), :mod:`.auth` checks bearer tokens (hashed in the secrets file) and roles,
:mod:`.masking` hides personal data.  Collaborators get an :class:`.context.ApiContext`,
never the daemon.  This module imports nothing heavy: the CLI reads :mod:`.masking`.
"""
