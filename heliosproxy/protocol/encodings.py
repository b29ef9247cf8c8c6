"""PostgreSQL client_encoding names mapped to Python codecs, to read a client's SQL text for classification."""

from __future__ import annotations

import codecs

# PostgreSQL's encoding names (pg_wchar.h / encnames.c), normalized by `_norm`, -> Python codec.
_CODECS: dict[str, str] = {
    "utf8": "utf-8",
    "unicode": "utf-8",
    "sqlascii": "latin-1",  # byte-transparent: the server does no conversion either
    "latin1": "latin-1",
    "iso88591": "latin-1",
    "latin2": "iso8859-2",
    "iso88592": "iso8859-2",
    "latin3": "iso8859-3",
    "iso88593": "iso8859-3",
    "latin4": "iso8859-4",
    "iso88594": "iso8859-4",
    "latin5": "iso8859-9",
    "iso88599": "iso8859-9",
    "latin6": "iso8859-10",
    "iso885910": "iso8859-10",
    "latin7": "iso8859-13",
    "iso885913": "iso8859-13",
    "latin8": "iso8859-14",
    "iso885914": "iso8859-14",
    "latin9": "iso8859-15",
    "iso885915": "iso8859-15",
    "latin10": "iso8859-16",
    "iso885916": "iso8859-16",
    "iso88595": "iso8859-5",
    "iso88596": "iso8859-6",
    "iso88597": "iso8859-7",
    "iso88598": "iso8859-8",
    "win866": "cp866",
    "win874": "cp874",
    "win1250": "cp1250",
    "win1251": "cp1251",
    "win1252": "cp1252",
    "win1253": "cp1253",
    "win1254": "cp1254",
    "win1255": "cp1255",
    "win1256": "cp1256",
    "win1257": "cp1257",
    "win1258": "cp1258",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "eucjp": "euc_jp",
    "eucjis2004": "euc_jis_2004",
    "euckr": "euc_kr",
    "euccn": "gb2312",
    "sjis": "shift_jis",
    "shiftjis2004": "shift_jis_2004",
    "big5": "big5",
    "gbk": "gbk",
    "gb18030": "gb18030",
    "uhc": "cp949",
    "johab": "johab",
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def python_codec(pg_name: str | None) -> str:
    """The Python codec for a client_encoding value; unknown names read as UTF-8 (the server decides)."""
    if not pg_name:
        return "utf-8"
    codec = _CODECS.get(_norm(pg_name.strip().strip("'\"")))
    if codec is None:
        return "utf-8"
    codecs.lookup(codec)  # every entry above exists in CPython; fail loudly if not
    return codec
