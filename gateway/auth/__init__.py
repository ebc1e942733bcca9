"""Viewer authentication, per-conversation authorization and scopes (DESIGN: Security model)."""

from gateway.auth.authenticator import ANONYMOUS, Authenticator, allowed_origins, denied_response
from gateway.auth.credentials import Credential
from gateway.auth.jwt_mode import CLAIM_CONVERSATIONS, CLAIM_SCOPE, CLAIM_SUBMIT, JwtVerifier, mint_token
from gateway.auth.principal import ALL, Denied, Principal, Scope

__all__ = [
    "ALL",
    "ANONYMOUS",
    "CLAIM_CONVERSATIONS",
    "CLAIM_SCOPE",
    "CLAIM_SUBMIT",
    "Authenticator",
    "Credential",
    "Denied",
    "JwtVerifier",
    "Principal",
    "Scope",
    "allowed_origins",
    "denied_response",
    "mint_token",
]
