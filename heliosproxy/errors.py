"""Error classes that carry a SQLSTATE and severity; the session turns them into ErrorResponse."""

from __future__ import annotations


class HeliosError(Exception):
    """Base error: `sqlstate` and `severity` are what the client sees in ErrorResponse."""

    sqlstate = "XX000"
    severity = "ERROR"

    def __init__(self, message: str, *, sqlstate: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        self.detail = detail


class FatalError(HeliosError):
    """An error after which the client connection is closed."""

    severity = "FATAL"


class ProtocolViolation(FatalError):
    sqlstate = "08P01"


class AuthFailed(FatalError):
    sqlstate = "28P01"


class AuthDenied(FatalError):
    sqlstate = "28000"


class TooManyConnections(FatalError):
    sqlstate = "53300"


class AdminShutdown(FatalError):
    sqlstate = "57P01"


class BackendUnavailable(HeliosError):
    """No backend could serve the statement (connection failure, node down, no primary)."""

    sqlstate = "08006"


class PoolTimeout(HeliosError):
    sqlstate = "53300"


class PluginBlocked(HeliosError):
    sqlstate = "42000"


class UndefinedObject(HeliosError):
    sqlstate = "42704"


class InsufficientPrivilege(HeliosError):
    sqlstate = "42501"


class BackendAuthError(Exception):
    """The proxy could not log in to a backend; carries the server's own ErrorResponse fields."""

    def __init__(self, message: str, sqlstate: str = "08006"):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class ConfigError(Exception):
    """A bad config: rendered as `file:line: key: reason`."""

    def __init__(self, file: str, line: int | None, key: str, reason: str):
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class ConfigErrors(ConfigError):
    """Several problems in one config file: one `file:line: key: reason` line each, in file order."""

    def __init__(self, errors: list[ConfigError]):
        ordered = sorted(errors, key=lambda e: (e.line is None, e.line or 0))
        first = ordered[0]
        super().__init__(first.file, first.line, first.key, first.reason)
        self.errors = ordered
        self.args = ("\n".join(str(e) for e in ordered),)

    def __str__(self) -> str:
        return str(self.args[0])
