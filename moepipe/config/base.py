"""What every params section shares: strict models and the one-line error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from moepipe.errors import UserError


class ConfigError(UserError, ValueError):
    """A user mistake in params.yaml: the message is one line naming the file and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
