"""``jwt`` mode: signed viewer tokens (PyJWT), verified locally; and minting for ``hq-gateway token``.

Claims (besides the registered ``sub``, ``exp``, ``nbf``, ``iat``, ``aud``, ``iss``):

* ``convs``  — list of conversation UUIDs the viewer may watch; ``"*"`` (alone or in the list) = all.
* ``scope``  — ``user`` | ``integrator`` | ``admin`` (default ``user``); a space-separated OAuth-style
  list is accepted and the highest of these three wins; anything else counts as ``user``.
* ``submit`` — true: the viewer may submit messages to the conversations it may watch.

``sub`` and ``exp`` are required; ``aud`` and ``iss`` when configured. Allowed algorithms are fixed by
configuration (never taken from the token), and HMAC and public-key families are never mixed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import jwt
from jwt.algorithms import get_default_algorithms

from gateway.auth.principal import ALL, Denied, Principal, Scope
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.ids import BadRequest, conversation_id

CLAIM_CONVERSATIONS = "convs"
CLAIM_SCOPE = "scope"
CLAIM_SUBMIT = "submit"
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_TOKEN_CHARS = 8192
MIN_SECRET_CHARS = 32

# PyJWT's exception → what the client is told (fixed texts: nothing from the token is echoed).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf/iat in the future)"),
    (jwt.InvalidAudienceError, "token audience mismatch"),
    (jwt.InvalidIssuerError, "token issuer mismatch"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.DecodeError, "token malformed"),
)


def parse_algorithms(text: str) -> tuple[str, ...]:
    """The configured algorithm list, validated: known names, one key family."""
    algs = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in algs if a not in HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS]
    if not algs or unknown:
        known = ", ".join(sorted(HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS))
        raise ConfigError(f"GATEWAY_AUTH_JWT_ALGORITHMS: expected a comma-separated list of {known}, got {text!r}")
    if set(algs) & HMAC_ALGORITHMS and set(algs) & PUBLIC_KEY_ALGORITHMS:
        raise ConfigError("GATEWAY_AUTH_JWT_ALGORITHMS: HMAC (HS*) and public-key algorithms cannot be mixed")
    return algs


def is_hmac(algorithms: Iterable[str]) -> bool:
    return any(a in HMAC_ALGORITHMS for a in algorithms)


def _read(path: str, setting: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """The viewer a verified token describes; malformed claims are refused, never guessed upward."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 256:
        raise Denied(401, "invalid_token", "token claim sub must be a non-empty string")
    raw_scope = claims.get(CLAIM_SCOPE, "user")
    if not isinstance(raw_scope, str):
        raise Denied(401, "invalid_token", f"token claim {CLAIM_SCOPE} must be a string")
    words = set(raw_scope.split())
    scope = next((s for s in (Scope.ADMIN, Scope.INTEGRATOR) if s.value in words), Scope.USER)
    raw_convs = claims.get(CLAIM_CONVERSATIONS, [])
    if isinstance(raw_convs, str):
        raw_convs = [raw_convs]
    if not isinstance(raw_convs, list) or not all(isinstance(c, str) for c in raw_convs) or len(raw_convs) > 10_000:
        raise Denied(401, "invalid_token", f'token claim {CLAIM_CONVERSATIONS} must be a list of UUIDs or "*"')
    convs: frozenset[str] | Literal["*"] = ALL
    if ALL not in raw_convs:
        try:
            convs = frozenset(conversation_id(c) for c in raw_convs)
        except BadRequest:
            raise Denied(401, "invalid_token", f"token claim {CLAIM_CONVERSATIONS} holds a non-UUID") from None
    submit = claims.get(CLAIM_SUBMIT, False)
    if not isinstance(submit, bool):
        raise Denied(401, "invalid_token", f"token claim {CLAIM_SUBMIT} must be true or false")
    exp = claims.get("exp")
    return Principal(sub, scope, convs, submit, float(exp) if isinstance(exp, int | float) else None)


class JwtVerifier:
    """Verifies viewer tokens against the configured secret, public key or JWKS file."""

    def __init__(self, settings: Settings) -> None:
        self.algorithms = parse_algorithms(settings.auth_jwt_algorithms)
        self.audience = settings.auth_jwt_audience or None
        self.issuer = settings.auth_jwt_issuer or None
        self.leeway = settings.auth_jwt_leeway_s
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        if is_hmac(self.algorithms):
            if len(settings.auth_jwt_secret) < MIN_SECRET_CHARS:
                raise ConfigError(f"GATEWAY_AUTH_JWT_SECRET: {self.algorithms[0]} needs a secret of at least "
                                  f"{MIN_SECRET_CHARS} characters")  # fmt: skip
            self._key = settings.auth_jwt_secret
        elif settings.auth_jwt_jwks_file:
            try:
                self._jwks = jwt.PyJWKSet.from_json(_read(settings.auth_jwt_jwks_file, "GATEWAY_AUTH_JWT_JWKS_FILE"))
            except (jwt.PyJWKError, json.JSONDecodeError, ValueError) as exc:
                raise ConfigError(f"GATEWAY_AUTH_JWT_JWKS_FILE: not a usable JWK set: {exc}") from None
        elif settings.auth_jwt_public_key_file:
            pem = _read(settings.auth_jwt_public_key_file, "GATEWAY_AUTH_JWT_PUBLIC_KEY_FILE")
            try:
                self._key = get_default_algorithms()[self.algorithms[0]].prepare_key(pem)
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"GATEWAY_AUTH_JWT_PUBLIC_KEY_FILE: not a {self.algorithms[0]} public key: "
                                  f"{exc}") from None  # fmt: skip
        else:
            raise ConfigError(
                f"GATEWAY_AUTH_JWT_PUBLIC_KEY_FILE or GATEWAY_AUTH_JWT_JWKS_FILE: {self.algorithms[0]} needs a key"
            )

    def _key_for(self, token: str) -> Any:
        if self._jwks is None:
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise Denied(401, "invalid_token", "token malformed") from None
        keys = self._jwks.keys
        if kid is None and len(keys) == 1:
            return keys[0]
        match = next((k for k in keys if k.key_id == kid), None)
        if match is None:
            raise Denied(401, "invalid_token", "token key id (kid) unknown")
        return match

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; Denied(401) naming what is wrong with any other."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Denied(401, "invalid_token", "token too long")
        required = ["exp", "sub"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "token invalid")
            raise Denied(401, "invalid_token", reason) from None
        principal = principal_from_claims(claims)
        if principal.expires_at is not None:  # accepted until exp + leeway, so connections end then too
            principal = replace(principal, expires_at=principal.expires_at + self.leeway)
        return principal


def mint_token(
    settings: Settings,
    *,
    subject: str,
    conversations: list[str] | str,
    scope: Scope,
    ttl_s: int,
    submit: bool,
    private_key_pem: str | None = None,
    now: float | None = None,
) -> str:
    """A signed viewer token for the configured algorithm, audience and issuer."""
    algorithms = parse_algorithms(settings.auth_jwt_algorithms)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        CLAIM_SCOPE: scope.value,
        CLAIM_CONVERSATIONS: [ALL] if conversations == ALL else sorted(conversations),
        CLAIM_SUBMIT: submit,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    if is_hmac(algorithms):
        if len(settings.auth_jwt_secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"GATEWAY_AUTH_JWT_SECRET: set a secret of at least {MIN_SECRET_CHARS} characters "
                              "(or use a public-key algorithm with --private-key)")  # fmt: skip
        return jwt.encode(claims, settings.auth_jwt_secret, algorithm=algorithms[0])
    if private_key_pem is None:
        raise ConfigError(f"{algorithms[0]}: pass --private-key with the PEM private key matching the public key")
    try:
        return jwt.encode(claims, private_key_pem, algorithm=algorithms[0])
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"--private-key: not a {algorithms[0]} private key: {exc}") from None
