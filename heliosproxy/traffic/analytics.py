"""Query analytics (`analytics:`): per-fingerprint time histograms, rows, bytes; slow-statement log; N+1; bursts."""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from typing import IO, Any

from heliosproxy.config.schema import AnalyticsConfig
from heliosproxy.sql.classify import StatementInfo
from heliosproxy.traffic.meter import ReplyMeter

log = logging.getLogger("heliosproxy.analytics")

# Time histogram: bucket i holds [_BASE * _RATIO**i, _BASE * _RATIO**(i+1)) seconds (~19% wide),
# from 10 µs up; the last bucket takes everything longer (~11 h).
_BASE = 1e-5
_RATIO = 2 ** 0.25
_LOG_RATIO = math.log(_RATIO)
_BUCKETS = 128
_SESSION_FINGERPRINTS = 256  # N+1 trackers per session (the oldest go first)
_BURST_TRACKERS = 10_000  # (client address, fingerprint) burst trackers in all

FINGERPRINT_COLUMNS = ("query", "calls", "errors", "total_ms", "mean_ms", "p50_ms", "p99_ms", "rows", "bytes")


def bucket_of(seconds: float) -> int:
    if seconds <= _BASE:
        return 0
    return min(int(math.log(seconds / _BASE) / _LOG_RATIO), _BUCKETS - 1)


def bucket_ms(index: int) -> float:
    """The middle (geometric) of a bucket, in milliseconds."""
    return float(_BASE * _RATIO ** (index + 0.5) * 1000.0)


def percentile_ms(buckets: dict[int, int], q: float) -> float:
    total = sum(buckets.values())
    if not total:
        return 0.0
    want = max(1, math.ceil(q * total))
    seen = 0
    for i in sorted(buckets):
        seen += buckets[i]
        if seen >= want:
            return bucket_ms(i)
    return bucket_ms(max(buckets))


class FpStat:
    """Per fingerprint, on top of the proxy's own QueryStat (text, calls, errors, total time, as
    SHOW QUERIES has them): rows, bytes and a time histogram counted as each statement finishes."""

    __slots__ = ("buckets", "bytes", "qs", "rows")

    def __init__(self, qs: Any):
        self.qs = qs  # heliosproxy.session.context.QueryStat (kept by ClientSession._record)
        self.rows = 0
        self.bytes = 0
        self.buckets: dict[int, int] = {}


class _Track:
    """Calls of one statement by one session (N+1) or one client address (bursts) in a sliding window."""

    __slots__ = ("times",)

    def __init__(self, threshold: int):
        self.times: collections.deque[float] = collections.deque(maxlen=threshold)

    def hit(self, now: float, window: float) -> bool:
        """Record a call; True when `threshold` calls fell within `window`."""
        times = self.times
        times.append(now)
        return len(times) == times.maxlen and now - times[0] <= window


class Analytics:
    """Fed by the session as each statement finishes (`finished`); read by SHOW ANALYTICS and /api/analytics."""

    def __init__(self, cfg: AnalyticsConfig, query_stats: dict[str, Any]):
        self.cfg = cfg
        self.query_stats = query_stats  # fingerprint -> QueryStat, filled by the session's _record
        self.stats: dict[str, FpStat] = {}
        self.untracked = 0  # statements of fingerprints past max_fingerprints
        self.slow = 0
        self.n_plus_one: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
        self.bursts: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
        self._burst_tracks: dict[tuple[str, str], _Track] = {}
        self._generation = 0  # N+1 trackers of sessions made before a change of n_plus_one are dropped
        self._log: IO[str] | None = None
        self._log_path: str | None = None
        self._log_failed = False
        self.configure(cfg)

    def configure(self, cfg: AnalyticsConfig) -> None:
        old = self.cfg
        self.cfg = cfg
        if cfg.slow_log.file != self._log_path:
            self.close()
            self._log_path = cfg.slow_log.file
            self._log_failed = False
        if (old.n_plus_one, old.bursts) != (cfg.n_plus_one, cfg.bursts):
            self._generation += 1
            self._burst_tracks.clear()

    def close(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except OSError as exc:
                log.warning("analytics: closing the slow log %s: %s", self._log_path, exc)
            self._log = None

    @staticmethod
    def new_meter(session: Any) -> ReplyMeter:
        return ReplyMeter(session.inflight, True)

    # ------------------------------------------------------------------ recording (client path)
    def finished(self, session: Any, info: StatementInfo | None, elapsed: float, error: str | None,
                 nbytes: int) -> None:
        """A statement got its ReadyForQuery (called for every one, in order)."""
        meter = session.tap
        if meter is None:  # analytics was turned on after this session began: rows from the next statement
            meter = session.tap = self.new_meter(session)
        if not meter.count:  # a meter the mirror made: count from here on
            meter.count = True
        rows = meter.take()
        if info is None or not info.fingerprint:
            return
        fp = info.fingerprint
        st = self.stats.get(fp)
        if st is None:
            qs = self.query_stats.get(fp)
            if qs is None or len(self.stats) >= self.cfg.max_fingerprints:
                self.untracked += 1
                return
            st = self.stats[fp] = FpStat(qs)
        if rows:
            st.rows += rows
        if nbytes > 0:
            st.bytes += nbytes
        i = bucket_of(elapsed)
        st.buckets[i] = st.buckets.get(i, 0) + 1
        cfg = self.cfg
        if cfg.slow_log.file is not None and elapsed >= cfg.slow_log.threshold:
            self._slow(session, info, st, elapsed, error, rows, nbytes)
        if info.tx is None:
            self._patterns(session, meter, fp, st.qs.normalized)

    def _patterns(self, session: Any, meter: ReplyMeter, fp: str, query: str) -> None:
        cfg = self.cfg
        now = time.monotonic()
        tracks = meter.tracks
        if tracks is None or tracks.get("") != self._generation:
            tracks = meter.tracks = {"": self._generation}
            meter.host = str(session.peer).rsplit(":", 1)[0]
        tr = tracks.get(fp)
        if tr is None:
            if len(tracks) > _SESSION_FINGERPRINTS:
                del tracks[next(k for k in tracks if k)]  # the oldest
            tr = tracks[fp] = _Track(cfg.n_plus_one.threshold)
        if tr.hit(now, cfg.n_plus_one.window):
            self._event(self.n_plus_one, (session.client_id, fp), session, query, cfg.n_plus_one.threshold,
                        client=session.client_id)
        host = meter.host
        key = (host, fp)
        burst = self._burst_tracks
        bt = burst.get(key)
        if bt is None:
            if len(burst) >= _BURST_TRACKERS:
                del burst[next(iter(burst))]  # the oldest
            bt = burst[key] = _Track(cfg.bursts.threshold)
        if bt.hit(now, cfg.bursts.window):
            self._event(self.bursts, key, session, query, cfg.bursts.threshold, client=host)

    def _event(self, book: collections.OrderedDict[tuple[str, str], dict[str, Any]], key: tuple[str, str],
               session: Any, query: str, threshold: int, client: str) -> None:
        ev = book.get(key)
        now = time.time()
        if ev is None:
            if len(book) >= self.cfg.max_events:
                book.popitem(last=False)
            ev = book[key] = {"client": client, "query": query, "count": threshold - 1, "user": session.user,
                              "database": session.database, "application_name": session.app_name,
                              "first_at": now}
        else:
            book.move_to_end(key)
        ev["count"] += 1
        ev["last_at"] = now

    def _slow(self, session: Any, info: StatementInfo, st: FpStat, elapsed: float, error: str | None,
              rows: int | None, nbytes: int) -> None:
        self.slow += 1
        if self._log_failed:
            return
        line = json.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "duration_ms": round(elapsed * 1000.0, 3),
            "query": st.qs.normalized,
            "fingerprint": info.fingerprint,
            "client": session.client_id,
            "addr": session.peer,
            "user": session.user,
            "database": session.database,
            "application_name": session.app_name,
            "rows": rows,
            "bytes": nbytes,
            "error": error,
        })
        try:
            if self._log is None:
                assert self._log_path is not None
                self._log = open(self._log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (kept open)
            self._log.write(line + "\n")
        except OSError as exc:
            self._log_failed = True  # said once; a reload (or a new file name) tries again
            log.error("analytics: cannot write the slow log %s: %s", self._log_path, exc)

    # ------------------------------------------------------------------ views
    def snapshot(self) -> dict[str, Any]:
        """Plain data of this worker (merged across workers by `merge`)."""
        return {
            "fingerprints": {
                fp: [s.qs.normalized, s.qs.calls, s.qs.errors, s.qs.total_us, s.rows, s.bytes,
                     {str(k): v for k, v in s.buckets.items()}]
                for fp, s in self.stats.items()
            },
            "n_plus_one": list(self.n_plus_one.values()),
            "bursts": list(self.bursts.values()),
            "untracked": self.untracked,
            "slow": self.slow,
        }


def merge(snaps: list[dict[str, Any]], limit: int = 100) -> dict[str, Any]:
    """The /api/analytics answer from one or more workers' snapshots."""
    merged: dict[str, list[Any]] = {}
    for snap in snaps:
        for fp, (query, calls, errors, total_us, rows, nbytes, buckets) in snap.get("fingerprints", {}).items():
            m = merged.setdefault(fp, [query, 0, 0, 0, 0, 0, {}])
            m[1] += calls
            m[2] += errors
            m[3] += total_us
            m[4] += rows
            m[5] += nbytes
            for k, v in buckets.items():
                m[6][int(k)] = m[6].get(int(k), 0) + v
    top = sorted(merged.values(), key=lambda m: m[3], reverse=True)[:limit]
    fingerprints = [
        {
            "query": q,
            "calls": c,
            "errors": e,
            "total_ms": round(t / 1000.0, 3),
            "mean_ms": round(t / 1000.0 / c, 3) if c else 0.0,
            "p50_ms": round(percentile_ms(b, 0.5), 3),
            "p99_ms": round(percentile_ms(b, 0.99), 3),
            "rows": r,
            "bytes": nb,
        }
        for q, c, e, t, r, nb, b in top
    ]

    def events(name: str) -> list[dict[str, Any]]:
        book: dict[tuple[str, str], dict[str, Any]] = {}
        for snap in snaps:
            for ev in snap.get(name, []):
                key = (ev["client"], ev["query"])
                have = book.get(key)
                if have is None:
                    book[key] = dict(ev)
                else:  # one client address in several workers (bursts)
                    have["count"] += ev["count"]
                    have["first_at"] = min(have["first_at"], ev["first_at"])
                    have["last_at"] = max(have["last_at"], ev["last_at"])
        return sorted(book.values(), key=lambda ev: ev["last_at"], reverse=True)

    return {
        "enabled": bool(snaps),
        "fingerprints": fingerprints,
        "n_plus_one": events("n_plus_one"),
        "bursts": events("bursts"),
        "untracked": sum(s.get("untracked", 0) for s in snaps),
        "slow": sum(s.get("slow", 0) for s in snaps),
    }
