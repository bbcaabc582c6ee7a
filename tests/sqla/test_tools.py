"""pandas and Alembic on the ``dosql`` dialect, unmodified, against a real cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

sa = pytest.importorskip("sqlalchemy")


def test_pandas_to_sql_and_read_sql(cluster_url: str) -> None:
    pd = pytest.importorskip("pandas")
    engine = sa.create_engine(cluster_url)
    try:
        frame = pd.DataFrame(
            {
                "id": list(range(1, 51)),
                "city": [f"city {i % 7}" for i in range(1, 51)],
                "score": [i / 4 for i in range(1, 51)],
            }
        )
        assert frame.to_sql("scores", engine, index=False) == 50
        frame.iloc[:5].to_sql("scores", engine, index=False, if_exists="append", method="multi")
        back = pd.read_sql(
            "SELECT city, count(*) AS n, sum(score) AS total FROM scores GROUP BY city ORDER BY city",
            engine,
        )
        expected = (
            pd.concat([frame, frame.iloc[:5]])
            .groupby("city", as_index=False)
            .agg(n=("id", "size"), total=("score", "sum"))
        )
        assert back["city"].tolist() == expected["city"].tolist()
        assert back["n"].tolist() == expected["n"].tolist()
        assert back["total"].tolist() == pytest.approx(expected["total"].tolist())
        params = pd.read_sql(
            sa.text("SELECT id FROM scores WHERE id = :id"), engine, params={"id": 7}
        )
        assert params["id"].tolist() == [7]
        table = pd.read_sql_table("scores", engine)  # reflection, then SELECT
        assert list(table.columns) == ["id", "city", "score"] and len(table) == 55
        frame.to_sql("scores", engine, index=False, if_exists="replace")
        assert pd.read_sql("SELECT count(*) AS n FROM scores", engine)["n"][0] == 50
    finally:
        engine.dispose()


def _script_dir(root: Path) -> Path:
    """A minimal Alembic environment: env.py plus two revisions."""
    scripts = root / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "script.py.mako").write_text("# unused\n", encoding="utf-8")
    (scripts / "env.py").write_text(
        """
from alembic import context
from sqlalchemy import create_engine

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
""",
        encoding="utf-8",
    )
    (scripts / "versions" / "0001_accounts.py").write_text(
        """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(100), nullable=False),
    )
    op.create_index("ix_accounts_email", "accounts", ["email"], unique=True)


def downgrade():
    op.drop_table("accounts")
""",
        encoding="utf-8",
    )
    (scripts / "versions" / "0002_plan.py").write_text(
        """
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.add_column("accounts", sa.Column("plan", sa.String(20), server_default="free"))


def downgrade():
    pass
""",
        encoding="utf-8",
    )
    return scripts


def test_alembic_upgrade(cluster_url: str, tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_script_dir(tmp_path)))
    cfg.set_main_option("sqlalchemy.url", cluster_url)
    command.upgrade(cfg, "0001")
    command.upgrade(cfg, "head")
    engine = sa.create_engine(cluster_url)
    try:
        insp = sa.inspect(engine)
        assert "accounts" in insp.get_table_names()
        assert [c["name"] for c in insp.get_columns("accounts")] == ["id", "email", "plan"]
        assert [i["name"] for i in insp.get_indexes("accounts")] == ["ix_accounts_email"]
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO accounts (id, email) VALUES (1, 'a@example.com')")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT plan FROM accounts").scalar() == "free"
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
                "0002"
            )
    finally:
        engine.dispose()
    command.upgrade(cfg, "head")  # already at head: nothing to do
