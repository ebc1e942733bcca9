"""Viewer authentication without sockets: credential sources, JWT verification, HQ decisions cache."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import ALL, Authenticator, Denied, JwtVerifier, Principal, Scope, mint_token
from gateway.auth.credentials import cookie_allowed, http_credential, stomp_credential
from gateway.auth.hq_mode import HqVerifier
from gateway.config import Settings, is_loopback, load_settings
from gateway.errors import ConfigError
from gateway.upstream.client import HqReply, UpstreamUnavailable

SECRET = "unit-test-secret-0123456789abcdefghij"
CONV = "9bf7540a-b129-4685-a120-730e8a0cb94b"
OTHER = "1c2d3e4f-0000-4000-8000-000000000001"
JWT = Settings(auth_mode="jwt", auth_jwt_secret=SECRET, auth_jwt_leeway_s=0)


def token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    base = {"sub": "alice", "exp": int(time.time()) + 60, "aud": "hq-gateway", "convs": [CONV]}
    return jwt.encode({**base, **claims}, key, algorithm=alg, headers=headers or None)


# -- credential sources ------------------------------------------------------------------------


def test_header_then_query_then_cookie() -> None:
    kw: dict[str, Any] = {"cookie_name": "hq_session", "allowed_origins": None}
    hdr = http_credential({"authorization": "Bearer a.b.c", "cookie": "hq_session=c"}, {"access_token": "q"}, **kw)
    assert hdr is not None and (hdr.token, hdr.source) == ("a.b.c", "header")
    query = http_credential({"cookie": "hq_session=c"}, {"access_token": "q"}, **kw)
    assert query is not None and (query.token, query.source) == ("q", "query")
    cookie = http_credential({"cookie": "x=1; hq_session=c"}, {}, **kw)
    assert cookie is not None and (cookie.token, cookie.source) == ("c", "cookie")
    assert http_credential({"authorization": "Basic abc"}, {}, **kw) is None
    assert "a.b.c" not in repr(hdr)


def test_cookie_is_ignored_cross_site_unless_allow_listed() -> None:
    same = {"origin": "https://gw.example.com", "host": "gw.example.com"}
    evil = {"origin": "https://evil.example", "host": "gw.example.com"}
    assert cookie_allowed({}, None)
    assert cookie_allowed(same, None)
    assert not cookie_allowed(evil, None)
    assert cookie_allowed(evil, frozenset({"https://evil.example"}))
    cred = http_credential({**evil, "cookie": "hq_session=t"}, {}, cookie_name="hq_session", allowed_origins=None)
    assert cred is None


def test_stomp_connect_headers_first_then_handshake() -> None:
    kw: dict[str, Any] = {"cookie_name": "hq_session", "allowed_origins": None}
    auth = stomp_credential([("Authorization", "Bearer t1"), ("passcode", "t2")], {}, {}, **kw)
    assert auth is not None and (auth.token, auth.source) == ("t1", "stomp-authorization")
    passcode = stomp_credential([("login", "x"), ("passcode", "t2")], {"authorization": "Bearer h"}, {}, **kw)
    assert passcode is not None and passcode.token == "t2"
    handshake = stomp_credential([("host", "x")], {"cookie": "hq_session=c"}, {}, **kw)
    assert handshake is not None and (handshake.token, handshake.source) == ("c", "cookie")
    assert stomp_credential([], {}, {}, **kw) is None


# -- jwt mode ----------------------------------------------------------------------------------


def test_valid_token_claims() -> None:
    p = JwtVerifier(JWT).verify(token({"scope": "admin", "submit": True, "convs": [CONV.upper()]}))
    assert (p.subject, p.scope, p.may_submit) == ("alice", Scope.ADMIN, True)
    assert p.may_view(CONV) and not p.may_view(OTHER)
    assert p.expires_at is not None and p.expires_at > time.time()
    everything = JwtVerifier(JWT).verify(token({"convs": "*"}))
    assert everything.conversations == ALL and everything.scope is Scope.USER and not everything.may_submit


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 5}, "token expired"),
        ({"aud": "someone-else"}, "token audience mismatch"),
        ({"nbf": int(time.time()) + 300}, "token not yet valid"),
        ({"convs": ["not-a-uuid"]}, "holds a non-UUID"),
        ({"submit": "yes"}, "submit must be true or false"),
        ({"sub": ""}, "sub must be a non-empty string"),
    ],
)
def test_bad_claims_are_refused_with_a_reason(claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(Denied) as err:
        JwtVerifier(JWT).verify(token(claims))
    assert err.value.status == 401 and reason in err.value.message


def test_wrong_signature_missing_exp_garbage_and_alg_none() -> None:
    v = JwtVerifier(JWT)
    for bad, reason in [
        (token({}, key="another-secret-0123456789abcdefghijkl"), "signature invalid"),
        (jwt.encode({"sub": "a", "aud": "hq-gateway"}, SECRET, algorithm="HS256"), "required claim"),
        ("not.a.jwt", "malformed"),
        (jwt.encode({"sub": "a", "exp": time.time() + 60, "aud": "hq-gateway"}, None, algorithm="none"), "algorithm"),
        ("x" * 9000, "too long"),
    ]:
        with pytest.raises(Denied) as err:
            v.verify(bad)
        assert reason in err.value.message and bad not in err.value.message


def test_scope_claim_never_guessed_upward() -> None:
    v = JwtVerifier(JWT)
    assert v.verify(token({"scope": "openid profile"})).scope is Scope.USER
    assert v.verify(token({"scope": "openid integrator"})).scope is Scope.INTEGRATOR
    assert v.verify(token({"scope": "superuser"})).scope is Scope.USER


def test_issuer_enforced_when_configured() -> None:
    v = JwtVerifier(JWT.replace(auth_jwt_issuer="https://idp"))
    assert v.verify(token({"iss": "https://idp"})).subject == "alice"
    for claims in ({"iss": "https://other"}, {}):
        with pytest.raises(Denied):
            v.verify(token(claims))


def test_mint_round_trip_and_cli_shape() -> None:
    t = mint_token(JWT, subject="bob", conversations=[CONV], scope=Scope.USER, ttl_s=60, submit=True)
    p = JwtVerifier(JWT).verify(t)
    assert (p.subject, p.conversations, p.may_submit) == ("bob", frozenset({CONV}), True)
    assert "\n" not in t
    with pytest.raises(ConfigError, match="at least 32"):
        mint_token(Settings(), subject="b", conversations=ALL, scope=Scope.USER, ttl_s=1, submit=False)


def _pem_pair(kind: str) -> tuple[str, str]:
    key: Any = rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    return private, public


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_public_key_and_jwks(tmp_path: Path, alg: str) -> None:
    private, public = _pem_pair(alg)
    (tmp_path / "pub.pem").write_text(public)
    settings = Settings(auth_mode="jwt", auth_jwt_algorithms=alg, auth_jwt_public_key_file=str(tmp_path / "pub.pem"))
    minted = mint_token(settings, subject="c", conversations=ALL, scope=Scope.ADMIN, ttl_s=60, submit=False,
                        private_key_pem=private)  # fmt: skip
    assert JwtVerifier(settings).verify(minted).scope is Scope.ADMIN
    # The public key used as an HMAC secret (algorithm confusion) is refused.
    forged = jwt.encode({"sub": "m", "exp": time.time() + 60, "aud": "hq-gateway"}, "x" * 40, algorithm="HS256")
    with pytest.raises(Denied, match="algorithm"):
        JwtVerifier(settings).verify(forged)
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(
        jwt.algorithms.get_default_algorithms()[alg].prepare_key(public)))  # fmt: skip
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": alg}]}))
    with_jwks = Settings(auth_mode="jwt", auth_jwt_algorithms=alg, auth_jwt_jwks_file=str(tmp_path / "jwks.json"))
    assert JwtVerifier(with_jwks).verify(token({}, key=private, alg=alg, kid="k1")).subject == "alice"
    with pytest.raises(Denied, match="kid"):
        JwtVerifier(with_jwks).verify(token({}, key=private, alg=alg, kid="k2"))


def test_jwt_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_AUTH_JWT_SECRET"):
        JwtVerifier(Settings(auth_mode="jwt", auth_jwt_secret="short"))
    with pytest.raises(ConfigError, match="cannot be mixed"):
        JwtVerifier(JWT.replace(auth_jwt_algorithms="HS256,RS256"))
    with pytest.raises(ConfigError, match="needs a key"):
        JwtVerifier(Settings(auth_mode="jwt", auth_jwt_algorithms="ES256"))


# -- hq mode -----------------------------------------------------------------------------------


class FakeHq:
    def __init__(self, answers: dict[str, int], delay: float = 0.0) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str | None]] = []
        self.delay = delay

    async def get_conversation(self, conversation_id: str, token: str | None = None) -> HqReply:
        self.calls.append((conversation_id, token))
        await asyncio.sleep(self.delay)
        status = self.answers.get(token or "", 401)
        if status == 0:
            raise UpstreamUnavailable("down")
        return HqReply(status, {"viewing_as": "admin" if token == "boss" else "participant"})


def test_hq_decisions_are_cached_shared_and_bounded() -> None:
    now = [0.0]
    hq = FakeHq({"good": 200, "boss": 200, "nosy": 404, "flaky": 503, "down": 0}, delay=0.01)
    v = HqVerifier(hq, scope=Scope.USER, ttl_s=30, negative_ttl_s=5, max_entries=3, clock=lambda: now[0])

    async def main() -> None:
        principals = await asyncio.gather(*(v.authorize("good", CONV) for _ in range(50)))
        assert len(hq.calls) == 1  # a reconnect storm became one HQ call
        p = principals[0]
        assert (p.scope, p.may_view(CONV), p.may_view(OTHER), p.hq_token) == (Scope.USER, True, False, "good")
        assert "good" not in repr(p) and p.subject.startswith("hq:")
        assert (await v.authorize("boss", CONV)).scope is Scope.ADMIN
        for _ in range(3):
            with pytest.raises(Denied) as err:
                await v.authorize("nosy", CONV)
            assert err.value.status == 403
        with pytest.raises(Denied) as err:
            await v.authorize("stranger", CONV)
        assert err.value.status == 401
        assert len(hq.calls) == 4
        for bad in ("flaky", "flaky", "down"):  # unavailability is never cached
            with pytest.raises(Denied) as err:
                await v.authorize(bad, CONV)
            assert err.value.status == 503
        assert len(hq.calls) == 7 and v.cached == 3
        now[0] = 6.0  # negative TTL over, positive not
        with pytest.raises(Denied):
            await v.authorize("nosy", CONV)
        assert len(hq.calls) == 8

    asyncio.run(main())


def test_authenticator_modes_and_self_downgrade() -> None:
    async def main() -> None:
        none = Authenticator(Settings(), FakeHq({}))
        anon = await none.authorize(None, CONV)
        assert anon.scope is Scope.INTEGRATOR and anon.may_submit
        assert (await none.authorize(None, CONV, "user")).scope is Scope.USER
        assert (await none.authorize(None, CONV, "admin")).scope is Scope.INTEGRATOR  # never elevates
        jwt_auth = Authenticator(JWT, FakeHq({}))
        cred = jwt_auth.http_credential({"authorization": f"Bearer {token({})}"}, {})
        assert (await jwt_auth.authorize(cred, CONV)).subject == "alice"
        with pytest.raises(Denied) as err:
            await jwt_auth.authorize(cred, OTHER)
        assert err.value.status == 403
        with pytest.raises(Denied) as err:
            await jwt_auth.authorize(None, CONV)
        assert err.value.status == 401 and "missing credential" in err.value.message
        hq_auth = Authenticator(Settings(auth_mode="hq"), FakeHq({"good": 200}))
        assert await hq_auth.connect(hq_auth.http_credential({"authorization": "Bearer good"}, {})) is None
        bad = hq_auth.http_credential({}, {"access_token": "bad\ttoken"})
        with pytest.raises(Denied, match="malformed"):
            await hq_auth.authorize(bad, CONV)

    asyncio.run(main())


def test_principal_narrowing() -> None:
    p = Principal("a", Scope.ADMIN, ALL)
    assert p.narrowed("user").scope is Scope.USER
    assert p.narrowed("integrator") is p and p.narrowed(None) is p


# -- settings ----------------------------------------------------------------------------------


def test_none_mode_refuses_a_non_loopback_bind() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ConfigError, match=r"GATEWAY_AUTH_MODE=none refuses the non-loopback GATEWAY_HOST=0\.0\.0\.0"):
        load_settings(None, env={"GATEWAY_HOST": "0.0.0.0"})
    assert load_settings(None, env={"GATEWAY_HOST": "0.0.0.0", "GATEWAY_AUTH_ALLOW_INSECURE_BIND": "1"})
    assert load_settings(None, env={"GATEWAY_HOST": "0.0.0.0", "GATEWAY_AUTH_MODE": "jwt"})


def test_secrets_stay_out_of_settings_repr() -> None:
    text = repr(Settings(hq_token="hq_pat_x", auth_jwt_secret=SECRET))
    assert "hq_pat_x" not in text and SECRET not in text
