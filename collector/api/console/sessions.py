"""Console sessions: an opaque random id in a cookie, mapped in memory to who logged in.

The bearer token pasted at the login is checked against the secrets file and forgotten:
the session keeps the token's name, role and hash (to end the session when the token is
revoked or its role changes: any change of the secrets file ends the sessions opened
before it), never the token.  A session ends after ``minutes`` unused,
at logout, or when the daemon stops (memory only: a restart logs everybody out).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from collector.config.secrets import ApiToken

from ..auth import Principal

COOKIE: Final = "amic_session"
MAX_SESSIONS: Final = 10_000  # past this the least recently used goes


@dataclass(slots=True)
class Session:
    sid: str
    who: Principal
    generation: int  # of the secrets file (Tokens.generation) when it was opened
    csrf: str  # the token every console POST of this session carries
    expires: float


class Sessions:
    """Sessions by id; ``clock`` is monotonic seconds (tests move it)."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = minutes * 60.0
        self.clock = clock
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()  # read pages run in FastAPI's thread pool

    def open(self, token: ApiToken, generation: int) -> Session:
        who = Principal(token.name, token.role, token.operator)
        s = Session(secrets.token_urlsafe(32), who, generation, secrets.token_urlsafe(32),
                    self.clock() + self.seconds)
        with self._lock:
            now = self.clock()
            for sid in [k for k, v in self._by_id.items() if v.expires <= now]:
                del self._by_id[sid]
            while len(self._by_id) >= MAX_SESSIONS:
                del self._by_id[min(self._by_id, key=lambda k: self._by_id[k].expires)]
            self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (its expiry pushed on), or None."""
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            now = self.clock()
            if s.expires <= now:
                del self._by_id[sid]
                return None
            s.expires = now + self.seconds
            return s

    def close(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)
