"""SQLAlchemy's own dialect compliance tests, unmodified."""

from sqlalchemy.testing.suite import *  # noqa: F403
