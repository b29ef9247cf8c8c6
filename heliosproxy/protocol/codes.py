"""Message type bytes, protocol codes and the SQLSTATEs the proxy itself emits."""

from __future__ import annotations

from typing import Final

PROTOCOL_3_0: Final = 196608  # 3 << 16
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102
MAX_STARTUP_PACKET: Final = 10_000

# Frontend message types (as ints, compared against buf[i]).
F_QUERY: Final = ord("Q")
F_PARSE: Final = ord("P")
F_BIND: Final = ord("B")
F_DESCRIBE: Final = ord("D")
F_EXECUTE: Final = ord("E")
F_CLOSE: Final = ord("C")
F_SYNC: Final = ord("S")
F_FLUSH: Final = ord("H")
F_FUNCTION_CALL: Final = ord("F")
F_COPY_DATA: Final = ord("d")
F_COPY_DONE: Final = ord("c")
F_COPY_FAIL: Final = ord("f")
F_TERMINATE: Final = ord("X")
F_PASSWORD: Final = ord("p")  # PasswordMessage / SASLInitialResponse / SASLResponse

FRONTEND_TYPES: Final = frozenset(
    ord(c) for c in "QPBDECSHFdcfXp"
)

# Backend message types.
B_AUTH: Final = ord("R")
B_PARAMETER_STATUS: Final = ord("S")
B_BACKEND_KEY_DATA: Final = ord("K")
B_READY_FOR_QUERY: Final = ord("Z")
B_ERROR: Final = ord("E")
B_NOTICE: Final = ord("N")
B_NOTIFICATION: Final = ord("A")
B_PARSE_COMPLETE: Final = ord("1")
B_BIND_COMPLETE: Final = ord("2")
B_CLOSE_COMPLETE: Final = ord("3")
B_ROW_DESCRIPTION: Final = ord("T")
B_NO_DATA: Final = ord("n")
B_PARAMETER_DESCRIPTION: Final = ord("t")
B_DATA_ROW: Final = ord("D")
B_COMMAND_COMPLETE: Final = ord("C")
B_EMPTY_QUERY: Final = ord("I")
B_PORTAL_SUSPENDED: Final = ord("s")
B_COPY_IN: Final = ord("G")
B_COPY_OUT: Final = ord("H")
B_COPY_BOTH: Final = ord("W")
B_COPY_DATA: Final = ord("d")
B_COPY_DONE: Final = ord("c")
B_FUNCTION_CALL_RESPONSE: Final = ord("V")
B_NEGOTIATE_VERSION: Final = ord("v")

# Authentication request codes (body of 'R').
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

# Transaction status in ReadyForQuery.
TX_IDLE: Final = ord("I")
TX_IN_BLOCK: Final = ord("T")
TX_FAILED: Final = ord("E")
