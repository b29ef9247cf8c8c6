"""The session objects a statement string makes or drops (PREPARE, DEALLOCATE, LISTEN, UNLISTEN, DISCARD), in order."""

from __future__ import annotations

import json
from typing import Final

from pglast import parser as _pg

# One action: (what, name, text). what is one of the constants below; name is the prepared
# statement or channel (None: ALL / *); text is the statement's own text (PREPARE only).
Action = tuple[str, str | None, str]
PREPARE: Final = "prepare"
DEALLOCATE: Final = "deallocate"
LISTEN: Final = "listen"
UNLISTEN: Final = "unlisten"
DISCARD_ALL: Final = "discard"


def actions(sql: str) -> list[Action]:
    """What `sql` does to the session's prepared statements and LISTEN channels, statement by statement
    (DISCARD ALL drops both). Empty when it does not parse (the server refuses it as well)."""
    try:
        stmts = json.loads(_pg.parse_sql_json(sql)).get("stmts", [])
    except Exception:
        return []
    data = sql.encode("utf-8")  # statement locations are byte offsets into the UTF-8 text
    out: list[Action] = []
    for raw in stmts:
        for kind, fields in raw.get("stmt", {}).items():
            if kind == "PrepareStmt":
                start = int(raw.get("stmt_location", 0))
                length = raw.get("stmt_len")
                end = start + int(length) if length else len(data)
                out.append((PREPARE, str(fields.get("name", "")), data[start:end].decode("utf-8").strip()))
            elif kind == "DeallocateStmt":
                name = None if fields.get("isall") or "name" not in fields else str(fields["name"])
                out.append((DEALLOCATE, name, ""))
            elif kind == "ListenStmt":
                out.append((LISTEN, str(fields.get("conditionname", "")), ""))
            elif kind == "UnlistenStmt":
                out.append((UNLISTEN, str(fields["conditionname"]) if "conditionname" in fields else None, ""))
            elif kind == "DiscardStmt" and fields.get("target") == "DISCARD_ALL":
                out.append((DISCARD_ALL, None, ""))
    return out
