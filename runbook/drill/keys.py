"""The drill's throwaway credentials: HS256 JWTs shaped like Supabase keys and user tokens, and vendor-style keys.

Supabase anon/service-role keys are JWTs signed with the project's JWT secret (`{"role": "anon", "ref": …}`);
a user's access token is a JWT with `sub` = the auth.users id and `role` = "authenticated". The app and the
REST stand-in verify them with the same secret, like GoTrue and PostgREST do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims: dict[str, Any], secret: str) -> str:
    """Return an HS256 JWT of `claims` signed with `secret`."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def verify_jwt(token: str, secret: str) -> dict[str, Any] | None:
    """Return the claims of an HS256 JWT signed with `secret` and not expired, else None."""
    try:
        header, payload, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64url_decode(signature)):
            return None
        claims = json.loads(_b64url_decode(payload))
    except (ValueError, TypeError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp < time.time():
        return None
    return claims


def token(prefix: str, nbytes: int = 24) -> str:
    """Return a random vendor-style credential, e.g. token('sk_test_')."""
    return prefix + secrets.token_hex(nbytes)


@dataclass
class SupabaseProject:
    """The Supabase project of the drill: ref, JWT secret, anon and service-role keys, Management API token."""

    # A project ref is 20 lowercase letters (the CLI's ProjectRefPattern `^[a-z]{20}$`, the Management API's
    # `ref` parameter pattern).
    ref: str = field(default_factory=lambda: "".join(secrets.choice(string.ascii_lowercase) for _ in range(20)))
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    access_token: str = field(default_factory=lambda: token("sbp_", 20))

    def key(self, role: str) -> str:
        """Return a project API key JWT for `role` ('anon' or 'service_role')."""
        return sign_jwt({"iss": "supabase", "ref": self.ref, "role": role, "iat": 1735689600, "exp": 2051222400},
                        self.jwt_secret)

    @property
    def anon_key(self) -> str:
        """Return the anon (public) key."""
        return self.key("anon")

    @property
    def service_role_key(self) -> str:
        """Return the service-role key."""
        return self.key("service_role")

    def key_role(self, key: str | None) -> str | None:
        """Return the role of a valid project API key ('anon' | 'service_role'), else None."""
        if not key:
            return None
        claims = verify_jwt(key, self.jwt_secret)
        if not claims or claims.get("ref") != self.ref:
            return None
        role = claims.get("role")
        return role if role in ("anon", "service_role") else None

    def user_token(self, user_id: str, email: str, ttl: int = 3600) -> str:
        """Return an access token for a user, like GoTrue issues after sign-in."""
        now = int(time.time())
        claims = {"sub": user_id, "email": email, "role": "authenticated", "aud": "authenticated",
                  "iat": now, "exp": now + ttl, "session_id": secrets.token_hex(8)}
        return sign_jwt(claims, self.jwt_secret)

    def user_claims(self, access_token: str | None) -> dict[str, Any] | None:
        """Return the claims of a valid user access token, else None."""
        if not access_token:
            return None
        claims = verify_jwt(access_token, self.jwt_secret)
        if not claims or claims.get("role") != "authenticated" or not claims.get("sub"):
            return None
        return claims
