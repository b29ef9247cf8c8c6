"""A client's login without sockets: startup packets and the password exchange in, bytes and actions out."""

from __future__ import annotations

import struct

from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.auth import ClientAuth
from heliosproxy.protocol.tls import TLS_HANDSHAKE

_I = struct.Struct("!I")

# Startup parameters that are not session settings.
_NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})

# Where the machine is (Login.state).
STARTUP = 0  # reading startup packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage)
AUTH = 1  # reading password messages
WAIT = 2  # waiting for the glue: credential lookup or the plugin's verdict (input stays buffered)
DONE = 3  # authenticated: what follows in the buffer is the session's
CLOSED = 4  # failed, cancelled or dropped

# How a Fail action ends the connection.
FATAL = 0  # FATAL with this SQLSTATE and message
VIOLATION = 1  # a protocol violation: counted in protocol_errors, then FATAL
AUTH_FAILED = 2  # a refused login: counted in login_failures, logged as auth_failed, then FATAL


class Send:
    """Write these bytes to the client."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __repr__(self) -> str:
        return f"Send({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Send) and other.data == self.data


class StartTls:
    """Start TLS on the connection: after an SSLRequest (answer b"S" first) or on a direct TLS ClientHello
    (`initial`: the bytes read so far, to feed to the TLS layer)."""

    __slots__ = ("direct", "initial")

    def __init__(self, direct: bool, initial: bytes):
        self.direct = direct
        self.initial = initial

    def __repr__(self) -> str:
        return f"StartTls(direct={self.direct}, {len(self.initial)} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartTls) and (other.direct, other.initial) == (self.direct, self.initial)


class Cancel:
    """A CancelRequest: close this connection, cancel what the session with this key runs."""

    __slots__ = ("key", "pid")

    def __init__(self, pid: int, key: int):
        self.pid = pid
        self.key = key

    def __repr__(self) -> str:
        return f"Cancel({self.pid}, {self.key})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cancel) and (other.pid, other.key) == (self.pid, self.key)


class Drop:
    """Close without a word (as PostgreSQL does for an invalid startup packet length), counted in
    protocol_errors; `reason` is for the log."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Drop({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Drop) and other.reason == self.reason


class Fail:
    """End the connection with FATAL `sqlstate` `message`; `kind`: FATAL, VIOLATION or AUTH_FAILED."""

    __slots__ = ("kind", "message", "sqlstate")

    def __init__(self, sqlstate: str, message: str, kind: int = FATAL):
        self.sqlstate = sqlstate
        self.message = message
        self.kind = kind

    def __repr__(self) -> str:
        return f"Fail({self.sqlstate!r}, {self.message!r}, kind={self.kind})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fail) and (other.sqlstate, other.message, other.kind) == (
            self.sqlstate, self.message, self.kind)


class Startup:
    """A valid StartupMessage: who logs in, to what, with which settings (startup parameters and
    `options -c`, names lowercased) and helios.* attributes. Authentication follows."""

    __slots__ = ("app_name", "attrs", "database", "params", "settings", "user")

    def __init__(self, user: str, database: str, app_name: str, params: dict[str, str],
                 settings: dict[str, str], attrs: dict[str, str]):
        self.user = user
        self.database = database
        self.app_name = app_name
        self.params = params
        self.settings = settings
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"Startup({self.user!r}, {self.database!r}, settings={self.settings}, attrs={self.attrs})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Startup) and (
            other.user, other.database, other.app_name, other.params, other.settings, other.attrs
        ) == (self.user, self.database, self.app_name, self.params, self.settings, self.attrs)


class Lookup:
    """Find out how `user` authenticates (trust: is the user known; md5/SCRAM: its credential), then
    call Login.accept()/reject() (trust) or Login.begin() (password exchange)."""

    __slots__ = ("user",)

    def __init__(self, user: str):
        self.user = user

    def __repr__(self) -> str:
        return f"Lookup({self.user!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lookup) and other.user == self.user


class CheckPassword:
    """Plugin authentication: the client's cleartext password. Run the auth hook, then call
    Login.accept() or Login.reject()."""

    __slots__ = ("password",)

    def __init__(self, password: str):
        self.password = password

    def __repr__(self) -> str:
        return "CheckPassword(...)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckPassword) and other.password == self.password


class Authenticated:
    """The client proved who it is (`auth`: the md5/SCRAM exchange it passed, None for trust or plugin)."""

    __slots__ = ("auth",)

    def __init__(self, auth: ClientAuth | None = None):
        self.auth = auth

    def __repr__(self) -> str:
        return f"Authenticated({self.auth.kind if self.auth is not None else None})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Authenticated) and other.auth is self.auth


Action = Send | StartTls | Cancel | Drop | Fail | Startup | Lookup | CheckPassword | Authenticated


def welcome(params: dict[str, str], pid: int, key: int) -> bytes:
    """What a logged-in client is sent: AuthenticationOk, its ParameterStatus values, BackendKeyData and
    ReadyForQuery (idle)."""
    out = [messages.AUTH_OK_MSG]
    out.extend(messages.parameter_status(k, v) for k, v in params.items())
    out.append(messages.backend_key_data(pid, key))
    out.append(messages.READY_IDLE)
    return b"".join(out)


def parse_options(opts: str) -> list[tuple[str, str]]:
    """The `-c name=value` / `--name=value` items of a startup `options` string (backslash-space
    is a space inside a word), names with '-' spelled '_'."""
    out: list[tuple[str, str]] = []
    parts = opts.replace("\\ ", "\x00").split()
    i = 0
    while i < len(parts):
        p = parts[i].replace("\x00", " ")
        item: str | None = None
        if p == "-c" and i + 1 < len(parts):
            item = parts[i + 1].replace("\x00", " ")
            i += 1
        elif p.startswith("-c") or p.startswith("--"):
            item = p[2:]
        if item and "=" in item:
            k, v = item.split("=", 1)
            out.append((k.strip().replace("-", "_"), v))
        i += 1
    return out


class Login:
    """The login state machine of one client connection (sans-IO, in the style of h11 and asyncpg's
    coreproto). `receive()` consumes complete startup or password packets from `buf` (the session's
    input buffer, shared) and returns what the connection must do; bytes after the last packet it
    needs stay in `buf` for the session. The glue answers Lookup with begin()/accept()/reject() and
    CheckPassword with accept()/reject().

    `tls_available`: an SSLRequest or a direct TLS ClientHello starts TLS (else SSLRequest gets b"N");
    `tls_required`: a StartupMessage without TLS is refused; `plugin_auth`: a plugin authenticates
    with the client's cleartext password (else Lookup: trust, md5 or SCRAM-SHA-256)."""

    __slots__ = ("auth", "buf", "plugin_auth", "state", "tls", "tls_available", "tls_required", "user")

    def __init__(self, buf: bytearray, *, tls_available: bool = False, tls_required: bool = False,
                 plugin_auth: bool = False):
        self.buf = buf
        self.tls_available = tls_available
        self.tls_required = tls_required
        self.plugin_auth = plugin_auth
        self.tls = False  # TLS was started
        self.state = STARTUP
        self.user = ""
        self.auth: ClientAuth | None = None  # the md5/SCRAM exchange once begun

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes = b"") -> list[Action]:
        """Append `data` to the buffer and consume what can be consumed."""
        if data:
            self.buf += data
        out: list[Action] = []
        while True:
            state = self.state
            if state == STARTUP:
                if not self._startup_packet(out):
                    break
            elif state == AUTH:
                if not self._password_packet(out):
                    break
            else:
                break
        return out

    def _startup_packet(self, out: list[Action]) -> bool:
        """One startup-phase packet: True when consumed and the loop goes on."""
        buf = self.buf
        if self.tls_available and not self.tls and buf and buf[0] == TLS_HANDSHAKE:
            self.tls = True
            initial = bytes(buf)
            buf.clear()
            out.append(StartTls(True, initial))
            return False
        if len(buf) < 4:
            return False
        length = _I.unpack_from(buf, 0)[0]
        if length < 8 or length > codes.MAX_STARTUP_PACKET:
            # PostgreSQL logs this (COMMERROR) and closes without a word: so do we.
            self.state = CLOSED
            out.append(Drop("invalid length of startup packet"))
            return False
        if len(buf) < length:
            return False
        body = bytes(buf[4:length])
        del buf[:length]
        code = _I.unpack_from(body, 0)[0]
        if code == codes.SSL_REQUEST or code == codes.GSSENC_REQUEST:
            if code == codes.SSL_REQUEST and self.tls_available and not self.tls:
                if buf:
                    # Bytes after the SSLRequest, before the handshake: injected plaintext (CVE-2021-23222).
                    return self._fail(out, "08P01", "received unencrypted data after SSL request", VIOLATION)
                self.tls = True
                out.append(StartTls(False, b""))
                return False
            out.append(Send(b"N"))
            return True
        if code == codes.CANCEL_REQUEST:
            if len(body) < 12:
                return self._fail(out, "08P01", "invalid cancel request", VIOLATION)
            pid, key = struct.unpack_from("!II", body, 4)
            self.state = CLOSED
            out.append(Cancel(pid, key))
            return False
        if code >> 16 != 3:
            return self._fail(
                out, "0A000", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0"
            )
        try:
            _, params = messages.decode_startup(_I.pack(codes.PROTOCOL_3_0) + body[4:])
        except (ValueError, UnicodeDecodeError):
            return self._fail(out, "08P01", "invalid startup packet layout: expected terminator as last byte",
                              VIOLATION)
        unsupported = [k for k in params if k.startswith("_pq_.")]
        if code & 0xFFFF or unsupported:
            payload = _I.pack(codes.PROTOCOL_3_0) + _I.pack(len(unsupported))
            payload += b"".join(messages.cstr(k) for k in unsupported)
            out.append(Send(messages.msg(codes.B_NEGOTIATE_VERSION, payload)))
            for k in unsupported:
                params.pop(k)
        self._startup_message(params, out)
        return True

    def _startup_message(self, params: dict[str, str], out: list[Action]) -> None:
        if self.tls_required and not self.tls:
            self._fail(out, "28000", "TLS is required")
            return
        user = params.get("user", "")
        if not user:
            self._fail(out, "28000", "no PostgreSQL user name specified in startup packet")
            return
        if params.get("replication") not in (None, "false", "0", "off", "no"):
            self._fail(out, "08P01", "replication connections are not supported by the proxy")
            return
        self.user = user
        settings: dict[str, str] = {}
        attrs: dict[str, str] = {}
        items = [(k, v) for k, v in params.items() if k not in _NOT_SETTINGS]
        opts = params.get("options", "")
        if opts:
            items.extend(parse_options(opts))
        for name, value in items:
            low = name.lower()
            if low.startswith("helios."):
                attrs[low[7:]] = value
            else:
                settings[low] = value
        out.append(Startup(user, params.get("database") or user, params.get("application_name", ""), params,
                           settings, attrs))
        if self.plugin_auth:
            self.state = AUTH
            out.append(Send(messages.auth_request(codes.AUTH_CLEARTEXT)))
        else:
            self.state = WAIT
            out.append(Lookup(user))

    def _password_packet(self, out: list[Action]) -> bool:
        buf = self.buf
        if len(buf) < 5:
            return False
        t = buf[0]
        length = _I.unpack_from(buf, 1)[0]
        if t != codes.F_PASSWORD:
            return self._fail(out, "08P01", f"expected password response, got message type {chr(t)!r}", VIOLATION)
        if length < 4 or length > codes.MAX_STARTUP_PACKET:
            return self._fail(out, "08P01", "invalid password packet size", VIOLATION)
        if len(buf) < length + 1:
            return False
        body = bytes(buf[5 : length + 1])
        del buf[: length + 1]
        auth = self.auth
        if auth is None:  # plugin authentication: the glue runs the hook
            self.state = WAIT
            out.append(CheckPassword(body.rstrip(b"\x00").decode(errors="replace")))
            return False
        step = auth.step(body)
        if step.reply:
            out.append(Send(step.reply))
        if step.fatal is not None:
            return self._fail(out, step.fatal[0], step.fatal[1], VIOLATION if step.fatal[0] == "08P01" else FATAL)
        if step.failed:
            self.state = CLOSED
            out.append(self._failed())
            return False
        if step.done:
            self.state = DONE
            out.append(Authenticated(auth))
            return False
        return True

    # ------------------------------------------------------------------ the glue's answers
    def begin(self, auth: ClientAuth) -> list[Action]:
        """Lookup answered with the md5/SCRAM exchange for the user: send its first request, then read
        the password messages (any already buffered too)."""
        if self.state != WAIT:
            return []
        self.auth = auth
        self.state = AUTH
        out: list[Action] = [Send(auth.start())]
        out.extend(self.receive())
        return out

    def accept(self) -> list[Action]:
        """Lookup (trust, the user is known) or CheckPassword answered: the client is in."""
        if self.state != WAIT:
            return []
        self.state = DONE
        return [Authenticated(None)]

    def reject(self, sqlstate: str = "28P01", message: str | None = None) -> list[Action]:
        """Lookup (trust, no such user) or CheckPassword answered: refused, by default as a wrong password."""
        if self.state == CLOSED or self.state == DONE:
            return []
        self.state = CLOSED
        if message is None:
            return [self._failed()]
        return [Fail(sqlstate, message, AUTH_FAILED)]

    # ------------------------------------------------------------------ helpers
    def _failed(self) -> Fail:
        return Fail("28P01", f'password authentication failed for user "{self.user}"', AUTH_FAILED)

    def _fail(self, out: list[Action], sqlstate: str, message: str, kind: int = FATAL) -> bool:
        self.state = CLOSED
        out.append(Fail(sqlstate, message, kind))
        return False
