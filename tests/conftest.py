"""Shared fixtures: the session's real PostgreSQL cluster and a factory of proxy subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from tests.helpers.pgcluster import ClusterTls, PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess, base_config, deep_merge


@pytest.fixture(scope="session")
def cluster() -> Iterator[PgCluster]:
    """A primary and 2 streaming standbys shared by the whole session.

    Leave it as you found it: a test that stops a node starts it again; a test that promotes
    or otherwise changes the topology uses `cluster_factory` for a cluster of its own.
    """
    with PgCluster(standbys=2) as c:
        yield c


@pytest.fixture
def cluster_factory() -> Iterator[Callable[..., PgCluster]]:
    """cluster_factory(standbys=1, settings=None, tls=None) -> a started PgCluster, stopped at test end."""
    made: list[PgCluster] = []

    def make(standbys: int = 1, *, settings: dict[str, str] | None = None, tls: ClusterTls | None = None) -> PgCluster:
        c = PgCluster(standbys=standbys, settings=settings, tls=tls)
        made.append(c)
        return c.start()

    yield make
    for c in reversed(made):
        c.stop()


@pytest.fixture
def proxy_factory(request: pytest.FixtureRequest) -> Iterator[ProxyFactory]:
    """proxy_factory(overrides, cluster=None, start=True, **top_level_keys) -> ProxyProcess.

    The base config has the cluster's nodes (the session `cluster` unless one is given), users
    app/md5user/plainuser/trustuser with their passwords and auth.method scram-sha-256;
    `overrides` (and keyword arguments, as top-level keys) merge into it: dicts merge, lists
    replace. listen and admin.listen get free ports. Every proxy is stopped at test end.
    """
    made: list[ProxyProcess] = []

    def make(
        overrides: Mapping[str, Any] | None = None,
        *,
        cluster: PgCluster | None = None,
        start: bool = True,
        env: Mapping[str, str] | None = None,
        **top_level: Any,
    ) -> ProxyProcess:
        pg: PgCluster = cluster if cluster is not None else request.getfixturevalue("cluster")
        config = deep_merge(base_config(pg.node_config()), overrides or {})
        config = deep_merge(config, top_level)
        proxy = ProxyProcess(config, start=False, env=env)
        made.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield make
    failures: list[str] = []
    for proxy in reversed(made):
        try:
            proxy.close()
        except AssertionError as exc:  # a traceback in its log: report after closing the others
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)
