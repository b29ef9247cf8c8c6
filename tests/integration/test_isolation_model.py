"""Model-based isolation test (issue 9): random steps by N pooled clients must look exactly like direct sessions.

Each client of the proxy (transaction pooling, pool size 1 or 2, everything on the primary) has a twin
direct session; see tests/helpers/isomodel.py. `make test` runs about 2,000 steps in total with a fixed
seed; `make test-isolation STEPS=10000 SEED=7` runs long. Environment variables read here:
ISOLATION_STEPS (total over the pool sizes), ISOLATION_SEED, ISOLATION_CLIENTS (default: 2-4 from the
seed), ISOLATION_POOL (pool sizes, default "1,2"), ISOLATION_EXCLUDE (step kinds to leave out,
comma-separated), ISOLATION_SHRINK_REPLAYS (replays spent shrinking a divergence).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.helpers.isomodel import CATALOGUE, SETUP_SQL, Config, Endpoint, Model
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyProcess, base_config, deep_merge

STEPS = int(os.environ.get("ISOLATION_STEPS", "2000"))
SEED = int(os.environ.get("ISOLATION_SEED", "9"))
EXCLUDE = frozenset(filter(None, os.environ.get("ISOLATION_EXCLUDE", "").split(",")))
SHRINK_REPLAYS = int(os.environ.get("ISOLATION_SHRINK_REPLAYS", "40"))
POOLS = [int(p) for p in os.environ.get("ISOLATION_POOL", "1,2").split(",")]

pytestmark = pytest.mark.timeout(max(300, STEPS // 5))


@pytest.fixture(scope="module")
def primary(cluster: PgCluster) -> PgCluster:
    cluster.sql(cluster.primary, SETUP_SQL)
    return cluster


@pytest.mark.parametrize("pool_size", POOLS)
def test_pooled_clients_behave_like_direct_sessions(primary: PgCluster, pool_size: int) -> None:
    unknown = EXCLUDE - set(CATALOGUE)
    assert not unknown, f"ISOLATION_EXCLUDE names unknown step kinds {sorted(unknown)}; known: {sorted(CATALOGUE)}"
    clients = int(os.environ.get("ISOLATION_CLIENTS") or "0") or random.Random(SEED * 10 + pool_size).randint(2, 4)
    problems: list[str] = []  # proxy logs with a traceback, from any run (exploring or shrinking)

    @contextmanager
    def fresh_proxy(size: int) -> Iterator[Endpoint]:
        config = deep_merge(base_config(primary.node_config()), {
            "pool": {"mode": "transaction", "size": size, "acquire_timeout": "500ms"},
            "routing": {"read_write_split": False},
        })
        proxy = ProxyProcess(config)
        try:
            yield Endpoint(proxy.host, proxy.port)
        finally:
            try:
                proxy.close()
            except AssertionError as exc:  # the proxy logged a traceback
                problems.append(str(exc)[-3000:])

    model = Model(fresh_proxy, Endpoint("127.0.0.1", primary.primary.port))
    hint = f"make test-isolation SEED={SEED} STEPS={STEPS} CLIENTS={clients} POOL={pool_size}"
    if EXCLUDE:
        hint += f" EXCLUDE={','.join(sorted(EXCLUDE))}"
    cfg = Config(seed=SEED, steps=STEPS // len(POOLS), clients=clients, pool_size=pool_size, exclude=EXCLUDE,
                 shrink_replays=SHRINK_REPLAYS, replay_hint=hint)
    outcome = model.explore(cfg)
    if outcome.divergence is not None:
        model.shrink(outcome)
    report = outcome.report()
    if outcome.divergence is not None:
        pytest.fail(report, pytrace=False)
    if problems:
        pytest.fail("the proxy logged a traceback:\n" + problems[0], pytrace=False)
    print(report)


def test_the_model_sees_no_divergence_between_two_direct_sessions(primary: PgCluster) -> None:
    """The model itself is deterministic: with PostgreSQL on both sides, 300 steps show nothing."""

    @contextmanager
    def no_proxy(size: int) -> Iterator[Endpoint]:
        yield Endpoint("127.0.0.1", primary.primary.port)

    model = Model(no_proxy, Endpoint("127.0.0.1", primary.primary.port))
    outcome = model.explore(Config(seed=SEED, steps=300, clients=3, pool_size=1))
    if outcome.divergence is not None:
        pytest.fail("the model is not deterministic:\n" + outcome.report(), pytrace=False)
