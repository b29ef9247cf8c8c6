"""`heliosproxy check-config --connect`: try every node and load every plugin as the proxy would."""

from __future__ import annotations

import asyncio
from pathlib import Path

from heliosproxy.backends.connection import QueryError, connect
from heliosproxy.backends.health import checker_credentials
from heliosproxy.config.schema import Config, NodeConfig, Role
from heliosproxy.errors import BackendAuthError
from heliosproxy.plugins import signing
from heliosproxy.plugins.hooks import PluginLoadError


async def _try_node(config: Config, node: NodeConfig) -> tuple[bool, str]:
    user, password = checker_credentials(config)
    where = f"node {node.name} ({node.host}:{node.port})"
    try:
        conn = await connect(
            node.name, node.host, node.port, user, password, config.health.database,
            timeout=config.health.timeout, params={"application_name": "heliosproxy-check-config"},
        )
    except BackendAuthError as exc:
        return False, f"{where}: login as {user!r} to database {config.health.database!r} failed: {exc.message}"
    except TimeoutError:
        return False, f"{where}: no answer within health.timeout ({config.health.timeout:g}s)"
    except OSError as exc:
        return False, f"{where}: cannot connect: {exc.strerror or exc}"
    try:
        rows = await conn.query("SELECT pg_is_in_recovery(), current_setting('server_version')")
    except QueryError as exc:
        return False, f"{where}: {exc.sqlstate} {exc.message}"
    finally:
        conn.abort()
    standby = rows[0][0] == "t"
    actual = "standby" if standby else "primary"
    if node.role is Role.SHADOW:
        return True, f"{where}: ok (shadow, a {actual}, PostgreSQL {rows[0][1]}, logged in as {user})"
    if node.role is Role.PRIMARY and standby:
        return False, f"{where}: configured as primary but the server is in recovery (a standby)"
    if node.role is not Role.PRIMARY and not standby:
        return False, f"{where}: configured as {node.role.value} but the server is a primary"
    return True, f"{where}: ok ({actual}, PostgreSQL {rows[0][1]}, logged in as {user})"


def _try_plugins(config: Config) -> list[tuple[bool, str]]:
    from heliosproxy.plugins import toolchain  # wasmtime is loaded only when there are plugins to check

    cfg = config.plugins
    if not cfg.enabled or not cfg.dir:
        return []
    directory = Path(cfg.dir)
    if not directory.is_dir():
        return [(False, f"plugins.dir {directory} is not a directory")]
    out: list[tuple[bool, str]] = []
    for i, wasm in enumerate(sorted(directory.glob("*.wasm"))):
        if i >= cfg.max_plugins:
            out.append((False, f"plugin {wasm.stem}: refused: plugins.max_plugins ({cfg.max_plugins}) reached"))
            continue
        try:
            sandbox = toolchain.load(wasm, cfg, quiet=True)
        except signing.SignatureError as exc:
            out.append((False, f"plugin {wasm.stem}: refused: signature: {exc}"))
            continue
        except PluginLoadError as exc:
            out.append((False, f"plugin {wasm.stem}: refused: {exc}"))
            continue
        m = sandbox.plugin.manifest
        signed = f", signed by {sandbox.plugin.signed_by}" if sandbox.plugin.signed_by else ""
        out.append((True, f"plugin {m.name}: ok ({m.version}, hooks {','.join(h.value for h in m.hooks)}{signed})"))
        sandbox.close()
    return out


def check_connect(config: Config) -> list[tuple[bool, str]]:
    """(ok, line) for every node (login and role) and every plugin in plugins.dir."""

    async def nodes() -> list[tuple[bool, str]]:
        return list(await asyncio.gather(*(_try_node(config, n) for n in config.nodes)))

    return asyncio.run(nodes()) + _try_plugins(config)
