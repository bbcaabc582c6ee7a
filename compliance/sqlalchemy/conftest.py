"""Loads SQLAlchemy's testing plugin; the dosql dialect comes from its entry point."""

from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: F403
