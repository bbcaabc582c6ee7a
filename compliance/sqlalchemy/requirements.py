"""What the dosql dialect supports, for SQLAlchemy's compliance suite.

Closed here, each for its reason: temporary tables and schemas other than
``main`` (the router refuses them), parenthesised SELECTs inside UNION
(SQLite's grammar has none; SQLAlchemy's own SQLite requirements close it too).
"""

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements


class Requirements(SuiteRequirements):
    @property
    def temp_table_reflection(self):
        return exclusions.closed()

    @property
    def temporary_tables(self):
        return exclusions.closed()

    @property
    def temp_table_names(self):
        return exclusions.closed()

    @property
    def temporary_views(self):
        return exclusions.closed()

    @property
    def schemas(self):
        return exclusions.closed()

    @property
    def cross_schema_fk_reflection(self):
        return exclusions.closed()

    @property
    def schema_create_delete(self):
        return exclusions.closed()

    @property
    def parens_in_union_intersect_except(self):
        return exclusions.closed()

    @property
    def parens_in_union_contained_select_w_limit_offset(self):
        return exclusions.closed()

    @property
    def parens_in_union_contained_select_wo_limit_offset(self):
        return exclusions.closed()

    @property
    def reflects_pk_names(self):
        # SQLite's dialect reads CONSTRAINT names from the CREATE TABLE text
        return exclusions.open()
