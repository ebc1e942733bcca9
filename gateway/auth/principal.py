"""Who a viewer is and what it may see: the ``Principal``, its ``Scope``, and the ``Denied`` refusal."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from gateway.errors import GatewayError

ALL: Literal["*"] = "*"


class Scope(StrEnum):
    """How much of the vocabulary a viewer receives (seed 000 ``?scope=``)."""

    USER = "user"  # diagnostic and accounting data stripped
    INTEGRATOR = "integrator"  # the full vocabulary
    ADMIN = "admin"  # the full vocabulary; every attach is audit-logged

    @property
    def full(self) -> bool:
        return self is not Scope.USER


class Denied(GatewayError):
    """A refused credential or conversation; ``message`` is safe to show the client (never the token)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status  # 401: no or bad credential; 403: valid but not for this; 429/503
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated viewer: subject, scope, conversations it may watch, submit right, expiry."""

    subject: str
    scope: Scope
    conversations: frozenset[str] | Literal["*"]
    may_submit: bool = False
    expires_at: float | None = None  # epoch seconds; None: the credential does not expire by itself
    hq_token: str | None = field(default=None, repr=False)  # hq mode: forwarded on submission

    def may_view(self, conversation_id: str) -> bool:
        return self.conversations == ALL or conversation_id in self.conversations

    def narrowed(self, requested: str | None) -> Principal:
        """Self-downgrade only (as HQ's ``?scope=``): ``user`` narrows, anything else changes nothing."""
        if requested == Scope.USER and self.scope is not Scope.USER:
            return replace(self, scope=Scope.USER)
        return self
