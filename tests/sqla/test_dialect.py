"""The ``dosql`` SQLAlchemy dialect against a real cluster: Core, ORM, reflection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

sa = pytest.importorskip("sqlalchemy")
orm = pytest.importorskip("sqlalchemy.orm")


@pytest.fixture(scope="module")
def engine(cluster_url: str) -> Iterator[object]:
    eng = sa.create_engine(cluster_url)
    yield eng
    eng.dispose()


def test_url_resolves_to_the_dialect_by_entry_point() -> None:
    from dosql.sqla.dialect import DoSQLDialect

    url = sa.engine.make_url("dosql://127.0.0.1:7000")
    assert url.get_dialect() is DoSQLDialect
    args, kwargs = DoSQLDialect().create_connect_args(
        sa.engine.make_url("dosql://:secret@127.0.0.1:7000?timeout=5")
    )
    assert args == ["dosql://127.0.0.1:7000"]
    assert kwargs == {"token": "secret", "timeout": 5.0}
    args, kwargs = DoSQLDialect().create_connect_args(
        sa.engine.make_url("dosql://db.example:443?tls=true&token=t")
    )
    assert args == ["dosqls://db.example:443"] and kwargs["token"] == "t"
    with pytest.raises(sa.exc.ArgumentError, match="unknown dosql URL parameter"):
        DoSQLDialect().create_connect_args(sa.engine.make_url("dosql://h:1?bogus=1"))


def test_core_create_insert_select(engine: object) -> None:
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(40)),
    )
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            users.insert(), [{"id": i, "tenant_id": i % 5, "name": f"u{i}"} for i in range(1, 21)]
        )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(users.c.id, users.c.name).where(users.c.tenant_id == 3).order_by(users.c.id)
        ).all()
        assert [tuple(r) for r in rows] == [(i, f"u{i}") for i in range(1, 21) if i % 5 == 3]
        total = conn.execute(sa.select(sa.func.count()).select_from(users)).scalar()
        assert total == 20
    # a rolled-back transaction leaves nothing behind
    with engine.connect() as conn:
        conn.execute(users.delete().where(users.c.tenant_id == 1))
        conn.rollback()
        assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 20
    md.create_all(engine)  # checkfirst: the table is found, nothing is created


class Base(orm.DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    body: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    rank: orm.Mapped[int | None] = orm.mapped_column(default=0)


def test_orm_session_with_router_assigned_ids(engine: object) -> None:
    Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        notes = [Note(body=f"note {i}", rank=i) for i in range(5)]
        session.add_all(notes)
        session.commit()
        ids = [n.id for n in notes]
        assert len(set(ids)) == 5 and all(isinstance(i, int) for i in ids)
    with orm.Session(engine) as session:
        found = session.scalars(sa.select(Note).order_by(Note.rank)).all()
        assert [n.body for n in found] == [f"note {i}" for i in range(5)]
        found[0].body = "changed"
        session.delete(found[1])
        session.commit()
    with orm.Session(engine) as session:
        assert session.get(Note, ids[0]).body == "changed"
        assert session.get(Note, ids[1]) is None
        assert session.scalar(sa.select(sa.func.count(Note.id))) == 4


def test_reflection_through_the_router(engine: object) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, sku VARCHAR(20) NOT NULL, "
            "price REAL DEFAULT 1.5, note TEXT, CONSTRAINT uq_items_sku UNIQUE (sku))"
        )
        conn.exec_driver_sql("CREATE INDEX ix_items_price ON items (price)")
        # system_config is unsharded on shard-3, not on the default shard
        conn.exec_driver_sql("CREATE TABLE system_config (key TEXT PRIMARY KEY, value TEXT)")
    insp = sa.inspect(engine)
    names = insp.get_table_names()
    assert {"items", "system_config"} <= set(names)
    assert not [n for n in names if n.startswith("_dosql") or n.startswith("sqlite_")]
    cols = {c["name"]: c for c in insp.get_columns("items")}
    assert list(cols) == ["id", "sku", "price", "note"]
    assert isinstance(cols["sku"]["type"], sa.String) and cols["sku"]["type"].length == 20
    assert cols["sku"]["nullable"] is False
    assert isinstance(cols["price"]["type"], sa.REAL) and cols["price"]["default"] == "1.5"
    assert insp.get_pk_constraint("items")["constrained_columns"] == ["id"]
    indexes = {i["name"]: i for i in insp.get_indexes("items")}
    assert indexes["ix_items_price"]["column_names"] == ["price"]
    assert not indexes["ix_items_price"]["unique"]
    assert insp.get_unique_constraints("items") == [
        {"name": "uq_items_sku", "column_names": ["sku"]}
    ]
    assert insp.has_table("system_config") and not insp.has_table("nope")
    assert [c["name"] for c in insp.get_columns("system_config")] == ["key", "value"]
    assert insp.get_pk_constraint("system_config")["constrained_columns"] == ["key"]
    with pytest.raises(sa.exc.NoSuchTableError):
        insp.get_columns("nope")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE item_tags (id INTEGER PRIMARY KEY, item_id INTEGER "
            "REFERENCES items (id), tag TEXT)"
        )
    fks = insp.get_foreign_keys("item_tags")
    assert [
        (f["constrained_columns"], f["referred_table"], f["referred_columns"]) for f in fks
    ] == [(["item_id"], "items", ["id"])]
    # a whole MetaData reflected, as Alembic's autogenerate and Superset do
    md = sa.MetaData()
    md.reflect(engine, only=["items", "system_config"])
    assert set(md.tables) == {"items", "system_config"}


def test_autocommit_isolation_level(engine: object) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.get_isolation_level() == "AUTOCOMMIT"
        conn.exec_driver_sql("CREATE TABLE ac (id INTEGER PRIMARY KEY, v TEXT)")
        conn.exec_driver_sql("INSERT INTO ac VALUES (1, 'x')")
    with engine.connect() as conn:  # the pool reset the level; the row was committed
        assert conn.get_isolation_level() == "SERIALIZABLE"
        assert conn.exec_driver_sql("SELECT v FROM ac").scalar() == "x"
