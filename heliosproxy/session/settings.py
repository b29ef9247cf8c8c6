"""Session settings, sans-IO: what a client's SET/RESET/DISCARD did, and the hidden statement that syncs a server."""

from __future__ import annotations

from collections.abc import Iterable

# Settings RESET ALL leaves alone (GUC_NO_RESET_ALL in PostgreSQL).
NO_RESET_ALL = frozenset(
    {"role", "session_authorization", "transaction_isolation", "transaction_read_only", "transaction_deferrable"}
)
RESET = "\x00reset"  # in BackendConnection.applied: the server has its own default for this name


def quote(value: str) -> str:
    """A string literal."""
    return "'" + value.replace("'", "''") + "'"


def sync_sql(applied: dict[str, str], want: dict[str, str]) -> str:
    """One statement that brings a server connection whose settings are `applied` to a session's `want`
    ("" when they agree). The caller records `applied = dict(want)` once it is sent.

    set_config(name, NULL, false) is RESET; names and values are literals, never identifiers.
    session_authorization goes first (it resets the role), the role right after it."""
    calls: list[str] = [
        f"pg_catalog.set_config({quote(k)}, NULL, false)" for k, v in applied.items() if k not in want and v != RESET
    ]
    changed = [k for k, v in want.items() if applied.get(k) != v]
    auth_reset = "session_authorization" in applied and "session_authorization" not in want
    if auth_reset or "session_authorization" in changed:
        changed.sort(key=lambda k: (k != "session_authorization", k != "role"))
        if "role" in want and "role" not in changed:
            changed.insert(1 if "session_authorization" in changed else 0, "role")
    calls.extend(f"pg_catalog.set_config({quote(k)}, {quote(want[k])}, false)" for k in changed)
    return "SELECT " + ", ".join(calls) if calls else ""


def readback_sql(names: tuple[str, ...]) -> str:
    """The hidden query that reads settings back after a statement that may have changed them (set_config())."""
    return "SELECT " + ", ".join(f"pg_catalog.current_setting({quote(n)}, true)" for n in names)


def discard_all(settings: dict[str, str], applied: dict[str, str], startup: dict[str, str]) -> None:
    """DISCARD ALL was accepted: the session is back to its startup settings, the server to its defaults."""
    settings.clear()
    settings.update(startup)
    applied.clear()


def apply(
    settings: dict[str, str],
    applied: dict[str, str],
    startup: dict[str, str],
    changes: Iterable[tuple[str, str | None, bool]],
) -> None:
    """The server accepted SET/RESET statements (`changes`: name, value or None for RESET, is SET LOCAL):
    record them in the session's settings and in the server connection's `applied`."""
    for name, value, is_local in changes:
        if is_local or name.startswith("helios."):
            continue
        if name == "all" and value is None:
            kept = {k: v for k, v in settings.items() if k in NO_RESET_ALL}
            settings.clear()
            settings.update(startup)
            settings.update(kept)
            for k in list(applied):
                if k not in NO_RESET_ALL:
                    applied[k] = RESET
            continue
        if value is None:  # RESET / SET ... TO DEFAULT: back to the startup value, as on a direct connection
            if name in startup:
                settings[name] = startup[name]
            else:
                settings.pop(name, None)
            applied[name] = RESET
        else:
            settings[name] = value
            applied[name] = value
        if name == "session_authorization":  # it also resets the role
            settings.pop("role", None)
            applied["role"] = RESET
