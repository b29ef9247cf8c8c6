"""Message type bytes, protocol codes and the SQLSTATEs the proxy itself emits."""

from __future__ import annotations

from typing import Final

PROTOCOL_3_0: Final = 196608  # 3 << 16
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102
MAX_STARTUP_PACKET: Final = 10_000

# Frontend message types (as ints, compared against buf[i]).
F_QUERY: Final = 81  # 'Q'
F_PARSE: Final = 80  # 'P'
F_BIND: Final = 66  # 'B'
F_DESCRIBE: Final = 68  # 'D'
F_EXECUTE: Final = 69  # 'E'
F_CLOSE: Final = 67  # 'C'
F_SYNC: Final = 83  # 'S'
F_FLUSH: Final = 72  # 'H'
F_FUNCTION_CALL: Final = 70  # 'F'
F_COPY_DATA: Final = 100  # 'd'
F_COPY_DONE: Final = 99  # 'c'
F_COPY_FAIL: Final = 102  # 'f'
F_TERMINATE: Final = 88  # 'X'
F_PASSWORD: Final = 112  # 'p': PasswordMessage / SASLInitialResponse / SASLResponse

FRONTEND_TYPES: Final = frozenset(ord(c) for c in "QPBDECSHFdcfXp")

# Backend message types.
B_AUTH: Final = 82  # 'R'
B_PARAMETER_STATUS: Final = 83  # 'S'
B_BACKEND_KEY_DATA: Final = 75  # 'K'
B_READY_FOR_QUERY: Final = 90  # 'Z'
B_ERROR: Final = 69  # 'E'
B_NOTICE: Final = 78  # 'N'
B_NOTIFICATION: Final = 65  # 'A'
B_PARSE_COMPLETE: Final = 49  # '1'
B_BIND_COMPLETE: Final = 50  # '2'
B_CLOSE_COMPLETE: Final = 51  # '3'
B_ROW_DESCRIPTION: Final = 84  # 'T'
B_NO_DATA: Final = 110  # 'n'
B_PARAMETER_DESCRIPTION: Final = 116  # 't'
B_DATA_ROW: Final = 68  # 'D'
B_COMMAND_COMPLETE: Final = 67  # 'C'
B_EMPTY_QUERY: Final = 73  # 'I'
B_PORTAL_SUSPENDED: Final = 115  # 's'
B_COPY_IN: Final = 71  # 'G'
B_COPY_OUT: Final = 72  # 'H'
B_COPY_BOTH: Final = 87  # 'W'
B_COPY_DATA: Final = 100  # 'd'
B_COPY_DONE: Final = 99  # 'c'
B_FUNCTION_CALL_RESPONSE: Final = 86  # 'V'
B_NEGOTIATE_VERSION: Final = 118  # 'v'

# Authentication request codes (body of 'R').
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

# Transaction status in ReadyForQuery.
TX_IDLE: Final = 73  # 'I'
TX_IN_BLOCK: Final = 84  # 'T'
TX_FAILED: Final = 69  # 'E'
