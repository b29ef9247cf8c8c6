"""Login slots: how many connections may be logging in at once, in total and per source address."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.session")

GO, WAIT, REFUSE = range(3)


class _Entry:
    __slots__ = ("ip", "key", "refuse", "resume", "state")

    def __init__(self, key: object, ip: str, resume: Callable[[], None], refuse: Callable[[], None]):
        self.key = key
        self.ip = ip
        self.resume = resume
        self.refuse = refuse
        self.state = WAIT  # WAIT (queued), GO (holds a slot), REFUSE (gone)


class LoginGate:
    """At most `max_login` connections log in at once, and `per_ip` from one address. A connection past
    those limits waits, unread, for a slot (its login timeout still runs); the queue of one address is
    bounded by `max_login` and the whole queue by `max_waiting`: when it is full, the newest waiter of the
    address with the longest queue is refused to make room (one address cannot crowd out the others).
    Logged-in clients never hold a slot, so sockets that never finish startup cannot lock out real logins
    from other addresses, nor count against max_client_connections."""

    def __init__(self) -> None:
        self.active = 0
        self.active_by_ip: dict[str, int] = {}
        self.waiting: dict[str, collections.deque[_Entry]] = {}  # per address, in arrival order
        self.n_waiting = 0
        self.entries: dict[object, _Entry] = {}
        self.refused = 0

    @property
    def holding(self) -> int:
        """Connections in the login phase (logging in or waiting to)."""
        return len(self.entries)

    def admit(
        self,
        key: object,
        ip: str,
        resume: Callable[[], None],
        refuse: Callable[[], None],
        max_login: int,
        per_ip: int,
        max_waiting: int,
    ) -> int:
        """GO (a slot is held), WAIT (`resume` is called when one is, `refuse` if evicted) or REFUSE."""
        entry = _Entry(key, ip, resume, refuse)
        if self.active < max_login and self.active_by_ip.get(ip, 0) < per_ip:
            self._take(entry)
            self.entries[key] = entry
            return GO
        queue = self.waiting.get(ip)
        mine = len(queue) if queue is not None else 0
        if mine >= max_login:
            self.refused += 1
            return REFUSE
        if self.n_waiting >= max_waiting:
            longest = max(self.waiting.values(), key=len, default=None)
            if longest is None or len(longest) <= mine + 1:
                self.refused += 1
                return REFUSE
            victim = longest[-1]
            self.release(victim.key, max_login, per_ip)
            self.refused += 1
            victim.refuse()
            queue = self.waiting.get(ip)
        if queue is None:
            queue = self.waiting[ip] = collections.deque()
        queue.append(entry)
        self.n_waiting += 1
        self.entries[key] = entry
        return WAIT

    def release(self, key: object, max_login: int, per_ip: int) -> None:
        """The connection logged in or went away: its slot (or place in the queue) is freed."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        if entry.state == GO:
            self.active -= 1
            n = self.active_by_ip[entry.ip] - 1
            if n:
                self.active_by_ip[entry.ip] = n
            else:
                del self.active_by_ip[entry.ip]
            self._promote(max_login, per_ip)
        elif entry.state == WAIT:
            entry.state = REFUSE
            queue = self.waiting[entry.ip]
            queue.remove(entry)
            self.n_waiting -= 1
            if not queue:
                del self.waiting[entry.ip]

    def _take(self, entry: _Entry) -> None:
        entry.state = GO
        self.active += 1
        self.active_by_ip[entry.ip] = self.active_by_ip.get(entry.ip, 0) + 1

    def _promote(self, max_login: int, per_ip: int) -> None:
        """Give free slots to waiters whose address is under its limit, addresses in order of first wait."""
        for ip in list(self.waiting):
            if self.active >= max_login:
                return
            queue = self.waiting[ip]
            while queue and self.active < max_login and self.active_by_ip.get(ip, 0) < per_ip:
                entry = queue.popleft()
                self.n_waiting -= 1
                self._take(entry)
                entry.resume()
            if not queue:
                del self.waiting[ip]


def admit(session: ClientSession, ip: str) -> bool:
    """A new connection (from `ip`, "unix" for a Unix socket) asks for a login slot: True to go on (now, or once
    its reading resumes)."""
    ctx = session.ctx
    cfg = ctx.config
    verdict = ctx.logins.admit(
        session,
        ip,
        session._resume_reading,
        lambda: _refuse(session),
        cfg.max_login_connections,
        cfg.max_login_connections_per_ip,
        cfg.max_client_connections,
    )
    if verdict == WAIT:
        session._pause_reading()
        return True
    if verdict == GO:
        return True
    _refuse(session)
    return False


def _refuse(session: ClientSession) -> None:
    session.ctx.counters.clients_refused += 1
    log.warning("refused connection from %s: too many connections still logging in", session.peer)
    session._fatal("53300", "sorry, too many connections still logging in")


def release(session: ClientSession) -> None:
    """The session logged in or closed: its login slot goes to the next waiting connection."""
    cfg = session.ctx.config
    session.ctx.logins.release(session, cfg.max_login_connections, cfg.max_login_connections_per_ip)
