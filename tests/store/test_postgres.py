"""PostgresStore: the contract suite unchanged, plus what only the shared backend promises."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.store.contract import T0, StoreContract, put_message
from zonerelay.store.base import StoreUnavailable
from zonerelay.store.postgres import SCHEMA_VERSION, PostgresStore, SchemaMismatch


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, postgres_dsn: str) -> AsyncIterator[PostgresStore]:
        s = PostgresStore(postgres_dsn)
        await s.migrate()
        await s.open()
        yield s
        await s.close()


async def test_schema_is_versioned_and_migrated_on_request(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn)
    with pytest.raises(SchemaMismatch, match="zonerelay store migrate"):
        await store.open()
    assert await store.migrate() == (None, SCHEMA_VERSION)
    assert await store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("UPDATE zonerelay_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaMismatch, match=f"schema version {SCHEMA_VERSION + 1}"):
        await store.open()
    with pytest.raises(SchemaMismatch, match="upgrade zonerelay"):
        await store.migrate()


async def test_unreachable_server_is_unavailable_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/none", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.open()
    assert time.monotonic() - started < 10


async def test_stores_of_different_instances_never_claim_the_same_delivery(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn) for _ in range(3)]
    await stores[0].migrate()
    for s in stores:
        await s.open()
    try:
        for _ in range(60):
            await put_message(stores[0])
        claims = await asyncio.gather(
            *(s.claim(f"i{n}/w0/1", 7, 60, T0 + 1) for n, s in enumerate(stores) for _ in range(4))
        )
        keys = [d.key for batch in claims for d in batch]
        assert len(keys) == len(set(keys)) == 60
        holders = await stores[1].lease_holders(T0 + 1)
        assert sum(holders.values()) == 60 and {o.split("/")[0] for o in holders} <= {"i0", "i1", "i2"}
    finally:
        for s in stores:
            await s.close()


async def next_sender(stores: list[PostgresStore]) -> PostgresStore:
    """The one of ``stores`` that sends the outbox once it takes over (within seconds)."""
    deadline = time.monotonic() + 10
    while True:
        leading = [s for s in stores if await s.outbox_lead()]
        if leading:
            [holder] = leading
            return holder
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


async def test_one_instance_sends_the_outbox_and_another_takes_over_when_it_goes(
    postgres_dsn: str, postgres_database: str
) -> None:
    stores = [PostgresStore(postgres_dsn) for _ in range(3)]
    await stores[0].migrate()
    for s in stores:
        await s.open()
    try:
        leads = [await s.outbox_lead() for s in stores]
        assert leads == [True, False, False]  # else every instance would send every DSN and webhook call
        # the sender's connection is cut (as when its instance dies): the lock goes with it
        conn = await asyncpg.connect(postgres_database)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        finally:
            await conn.close()
        holder = await next_sender(stores[1:])
        assert not await stores[0].outbox_lead()  # it learns it lost the lock
        # an orderly close hands it on too
        await holder.close()
        await next_sender([s for s in stores[1:] if s is not holder])
    finally:
        for s in stores:
            await s.close()


async def test_clusters_in_two_schemas_of_one_database_each_have_a_sender(postgres_database: str) -> None:
    conn = await asyncpg.connect(postgres_database)
    try:
        for name in ("t_lead_a", "t_lead_b"):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; CREATE SCHEMA "{name}"')
        stores = [PostgresStore(f"{postgres_database}?search_path={n}") for n in ("t_lead_a", "t_lead_b")]
        for s in stores:
            await s.migrate()
            await s.open()
        try:
            assert [await s.outbox_lead() for s in stores] == [True, True]
        finally:
            for s in stores:
                await s.close()
    finally:
        await conn.execute('DROP SCHEMA "t_lead_a" CASCADE; DROP SCHEMA "t_lead_b" CASCADE')
        await conn.close()
