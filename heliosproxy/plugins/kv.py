"""Per-plugin, in-process key/value namespaces behind the helios.kv_* imports, bounded in size."""

from __future__ import annotations

MAX_KEY_BYTES = 1024


class KvNamespace:
    """One plugin's keys: at most `max_keys` keys, values of at most `max_value_bytes` bytes."""

    __slots__ = ("_data", "max_keys", "max_value_bytes")

    def __init__(self, max_keys: int, max_value_bytes: int):
        self.max_keys = max_keys
        self.max_value_bytes = max_value_bytes
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def set(self, key: bytes, value: bytes) -> bool:
        """Store the value; False (nothing stored) when a limit would be exceeded."""
        if len(key) > MAX_KEY_BYTES or len(value) > self.max_value_bytes:
            return False
        if key not in self._data and len(self._data) >= self.max_keys:
            return False
        self._data[key] = bytes(value)
        return True

    def delete(self, key: bytes) -> bool:
        return self._data.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._data)

    def snapshot(self) -> dict[bytes, bytes]:
        return dict(self._data)


class KvStore:
    """All namespaces, by plugin name; kept across plugin reloads, lost on restart."""

    def __init__(self, max_keys: int, max_value_bytes: int):
        self.max_keys = max_keys
        self.max_value_bytes = max_value_bytes
        self._spaces: dict[str, KvNamespace] = {}

    def namespace(self, plugin: str) -> KvNamespace:
        ns = self._spaces.get(plugin)
        if ns is None:
            ns = self._spaces[plugin] = KvNamespace(self.max_keys, self.max_value_bytes)
        return ns
