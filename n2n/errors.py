"""Exceptions that mean "the user asked for something that cannot be done" (exit 2, no traceback)."""

from search_spaces import SpecError, UnsupportedModel

from .data import DataError
from .models import ModelError


class ConfigError(ValueError):
    """A config file or option with a bad key or value; the message names it."""


class RunError(ValueError):
    """A run folder that is missing, incomplete, or already exists."""


USER_ERRORS = (ConfigError, RunError, DataError, ModelError, SpecError, UnsupportedModel, FileExistsError,
               FileNotFoundError, PermissionError)
