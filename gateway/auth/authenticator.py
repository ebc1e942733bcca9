"""One entry point for every transport: which token was presented, and may it watch this conversation."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter
from starlette.responses import JSONResponse

from gateway.auth.credentials import Credential, canonical_origin, http_credential, stomp_credential
from gateway.auth.hq_mode import ConversationLookup, HqVerifier
from gateway.auth.jwt_mode import MAX_TOKEN_CHARS, JwtVerifier
from gateway.auth.principal import ALL, Denied, Principal, Scope
from gateway.config import Settings

audit_log = logging.getLogger("gateway.audit")

# none mode: local development; the full vocabulary, without admin attach auditing.
ANONYMOUS = Principal("anonymous", Scope.INTEGRATOR, ALL, may_submit=True)


def allowed_origins(setting: str) -> frozenset[str] | None:
    """The Origin allow-list; None when it contains ``*`` (any origin)."""
    origins = [canonical_origin(o) for o in setting.split(",") if o.strip()]
    return None if "*" in origins else frozenset(origins)


def _well_formed(token: str) -> bool:
    # Visible ASCII only: it goes into an HTTP header towards HQ, and must not carry CR/LF or spaces.
    return 0 < len(token) <= MAX_TOKEN_CHARS and all(0x21 <= ord(c) <= 0x7E for c in token)


class Authenticator:
    """Authentication (``none`` | ``jwt`` | ``hq``) and per-conversation authorization."""

    def __init__(self, settings: Settings, hq: ConversationLookup, registry: CollectorRegistry | None = None) -> None:
        self.mode = settings.auth_mode
        self.cookie_name = settings.auth_cookie_name
        self.allowed_origins = allowed_origins(settings.allowed_origins)
        self._decisions = Counter("hqgw_auth_decisions", "Viewer authorization decisions by outcome", ["outcome"],
                                  registry=registry)  # fmt: skip
        lookups = Counter("hqgw_auth_hq_lookups", "Authorization calls to HQ (hq mode) by outcome", ["outcome"],
                          registry=registry)  # fmt: skip
        self._jwt = JwtVerifier(settings) if self.mode == "jwt" else None
        self._hq = None
        if self.mode == "hq":
            self._hq = HqVerifier(
                hq,
                scope=Scope(settings.auth_hq_scope),
                ttl_s=settings.auth_hq_cache_ttl_s,
                negative_ttl_s=settings.auth_hq_negative_ttl_s,
                max_entries=settings.auth_hq_cache_size,
                on_lookup=lambda outcome: lookups.labels(outcome).inc(),
            )

    def http_credential(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Credential | None:
        return http_credential(headers, query, cookie_name=self.cookie_name, allowed_origins=self.allowed_origins)

    def stomp_credential(
        self, connect_headers: Iterable[tuple[str, str]], headers: Mapping[str, str], query: Mapping[str, str]
    ) -> Credential | None:
        return stomp_credential(
            connect_headers, headers, query, cookie_name=self.cookie_name, allowed_origins=self.allowed_origins
        )

    def _present(self, credential: Credential | None) -> str:
        if credential is None:
            where = f"the Authorization header, the {self.cookie_name} cookie, ?access_token= or the STOMP passcode"
            raise Denied(401, "unauthorized", f"missing credential: no token in {where}")
        if not _well_formed(credential.token):
            raise Denied(401, "invalid_token", "token malformed")
        return credential.token

    async def connect(self, credential: Credential | None) -> Principal | None:
        """A STOMP CONNECT: verify what can be verified without a conversation (None: decided per SUBSCRIBE)."""
        try:
            if self.mode == "none":
                return ANONYMOUS
            token = self._present(credential)
            return self._jwt.verify(token) if self._jwt is not None else None
        except Denied as refusal:
            self._decisions.labels("unauthorized").inc()
            raise refusal from None

    async def authorize(
        self, credential: Credential | None, conversation_id: str, requested_scope: str | None = None
    ) -> Principal:
        """The principal allowed to watch ``conversation_id``, narrowed to ``requested_scope``; else Denied."""
        try:
            principal = await self._decide(credential, conversation_id)
        except Denied as refusal:
            self._decisions.labels({401: "unauthorized", 403: "forbidden"}.get(refusal.status, "unavailable")).inc()
            raise refusal from None
        self._decisions.labels("allowed").inc()
        return principal.narrowed(requested_scope)

    async def _decide(self, credential: Credential | None, conversation_id: str) -> Principal:
        if self.mode == "none":
            return ANONYMOUS
        token = self._present(credential)
        if self._hq is not None:
            return await self._hq.authorize(token, conversation_id)
        assert self._jwt is not None
        principal = self._jwt.verify(token)
        if not principal.may_view(conversation_id):
            raise Denied(403, "forbidden", f"token does not allow conversation {conversation_id}")
        return principal

    def audit_attach(self, principal: Principal, conversation_id: str, transport: str, client: str) -> None:
        """Admin-scope attaches are logged, as HQ audits ``?view=admin`` (who, which conversation)."""
        if principal.scope is Scope.ADMIN:
            audit_log.info("admin attach subject=%r conversation=%s transport=%s client=%s",
                           principal.subject[:128], conversation_id, transport, client)  # fmt: skip


def denied_response(refusal: Denied) -> JSONResponse:
    """The HTTP answer to a refusal: its status, a JSON body naming the problem, never the token."""
    headers = {"WWW-Authenticate": f'Bearer error="{refusal.code}"'} if refusal.status == 401 else None
    if refusal.status in (429, 503):
        headers = {"Retry-After": "1"}
    return JSONResponse({"error": refusal.code, "message": refusal.message}, refusal.status, headers=headers)
