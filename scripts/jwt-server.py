#!/usr/bin/env python3
"""A real RFC 7523 authorization server (the JWT bearer grant), for the tests.

    JWT_PORT=9150 python scripts/jwt-server.py

Providers such as Google (service accounts, domain-wide delegation) and
Salesforce let a client exchange a JWT it signed with its own private key for
an access token (RFC 7523 section 2.1); App Store Connect skips the exchange
and takes such a self-signed JWT as the bearer credential itself. The broker
signs these assertions (RS256, ES256), so its tests need a server that checks
them as strictly as the real ones do: the token endpoint is Authlib's
JWTBearerGrant, served by its Flask integration, not a stand-in. Everything is
kept in memory; the admin API lets a test register issuers (keys), move an
issuer's clock, and inject outages.

Admin (test-only, JSON in and out):

  POST   /admin/issuers                    {"issuer", "public_key" (SPKI PEM, RSA
                                           or EC P-256), "subjects": [..]|null,
                                           "token_ttl": 3600, "clock_offset": 0,
                                           "max_lifetime": 3600, "audience":
                                           "<this server>/token", "bearer_audience":
                                           "jwt-demo-api", "bearer_max_lifetime":
                                           1200} -> 201 {"issuer"}; posting it
                                           again replaces its settings (key
                                           rotation), its tokens, used jtis,
                                           pending faults and counts are kept
  DELETE /admin/issuers/<issuer>           204; forgets it and its tokens
  POST   /admin/issuers/<issuer>/faults    {"status": 503|429, "count": n,
                                           "retry_after": s|null}: the next n
                                           token requests naming the issuer (by
                                           their unverified "iss") get that status
  GET    /admin/issuers/<issuer>/stats     {"token_requests", "tokens_issued",
                                           "refused", "faults_served",
                                           "last_error", "last_error_description"}
                                           (refused counts every non-200 answer,
                                           faults included)
  GET    /health

Protocol:

  POST /token            grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer,
                         assertion=<JWT>[, scope]; no client authentication
  GET  /api/whoami       Authorization: Bearer <access token from /token>
  GET  /bearer/whoami    Authorization: Bearer <self-signed JWT> (App Store
                         Connect style: aud is the issuer's bearer_audience)

Each issuer has its own clock, real time + clock_offset: exp must be after
it, iat not after it (no leeway), exp - iat at most max_lifetime; a jti is
accepted once. Refusals are RFC 6749 section 5.2 JSON. Assertions and tokens
are never logged, only issuers and error codes.
"""

import base64
import json
import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidGrantError
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, Response, jsonify, request
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import ECKey, RSAKey

PORT = int(os.environ.get("JWT_PORT", "9150"))
TOKEN_URL = f"http://127.0.0.1:{PORT}/token"
ALGORITHMS = ("RS256", "ES256")  # never none, never HS*: the keys are public

log = logging.getLogger("jwt-server")
LOCK = threading.RLock()


@dataclass
class Issuer:
    """A registered issuer; Authlib's client for the grant (ClientMixin)."""

    issuer: str
    key: RSAKey | ECKey
    subjects: list | None
    token_ttl: int
    clock_offset: int
    max_lifetime: int
    audience: str
    bearer_audience: str
    bearer_max_lifetime: int
    kid: str | None = None  # when set, an assertion's header must name it
    # State kept across a re-registration (key rotation), dropped on DELETE.
    used_jtis: dict = field(default_factory=dict)  # jti -> exp
    fault_jtis: set = field(default_factory=set)  # unverified jtis of faulted requests
    faults: list = field(default_factory=list)  # [status, remaining, retry_after]
    stats: dict = field(
        default_factory=lambda: {
            "token_requests": 0,
            "tokens_issued": 0,
            "refused": 0,
            "faults_served": 0,
            "last_error": None,
            "last_error_description": None,
        }
    )

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    # -- what Authlib asks of a client --
    def get_client_id(self):
        return self.issuer

    def check_grant_type(self, grant_type):
        return grant_type == JWTBearerGrant.GRANT_TYPE

    def get_allowed_scope(self, scope):
        return scope or ""  # None would make Authlib answer invalid_scope

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "none"


ISSUERS: dict[str, Issuer] = {}
TOKENS: dict[str, dict] = {}  # access token -> {issuer, subject, scope, expires_at}


def b64_json(segment: str):
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def unverified_iss(value) -> str | None:
    """The "iss" of a compact JWT, read without verifying it (for routing only)."""
    try:
        claims = b64_json(value.split(".")[1])
        iss = claims.get("iss")
        return iss if isinstance(iss, str) else None
    except Exception:  # noqa: BLE001 -- anything malformed has no issuer
        return None


def unverified_claim(value: str, name: str):
    """A claim of a JWT whose signature is not checked (for counting only)."""
    try:
        return b64_json(value.split(".")[1]).get(name)
    except Exception:  # noqa: BLE001 - any malformed input counts as none
        return None


def ledger(assertion):
    """Adds an assertion's signature to the stack's log-hygiene ledger
    (`no_secrets_in_logs`): no log of the broker may hold it."""
    path = os.environ.get("STACK_DIR")
    if not assertion or not path or assertion.count(".") != 2:
        return
    with LOCK, open(os.path.join(path, "secrets-ledger.txt"), "a") as f:
        f.write(assertion.rsplit(".", 1)[1] + "\n")


def unverified_alg(value) -> str | None:
    try:
        return b64_json(value.split(".")[0]).get("alg")
    except Exception:  # noqa: BLE001
        return None


def import_public_key(pem: str) -> RSAKey | ECKey:
    key = serialization.load_pem_public_key(pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(pem)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ECKey.import_key(pem)
    raise ValueError("public_key must be an RSA or EC P-256 public key")


def claims_registry(issuer: Issuer, audience: str, jti: bool) -> jwt.JWTClaimsRegistry:
    """The claims an assertion (`jti` required: each is used once) or a
    self-signed bearer JWT (no `jti`, as App Store Connect's) must carry."""
    return jwt.JWTClaimsRegistry(
        now=issuer.now,
        leeway=0,
        iss={"essential": True, "value": issuer.issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": jti},
    )


class JWTBearer(JWTBearerGrant):
    """RFC 7523 section 2.1, with each issuer's audience, clock and limits."""

    LEEWAY = 0
    CLAIMS_OPTIONS = {name: {"essential": True} for name in ("iss", "aud", "exp", "iat", "jti")}

    def extract_assertion(self, assertion):
        headers, claims = super().extract_assertion(assertion)
        if headers.get("alg") not in ALGORITHMS:
            raise InvalidGrantError(description=f"Algorithm {headers.get('alg')!r} is not accepted")
        with LOCK:
            issuer = ISSUERS.get(claims.get("iss"))
        if issuer is not None and issuer.kid is not None and headers.get("kid") != issuer.kid:
            raise InvalidGrantError(description="The assertion's kid names no key of this issuer")
        self.claims = claims
        return headers, claims

    def resolve_issuer_client(self, issuer):
        # Asked twice a request: both answers are the first one (a grant is
        # one request), so a concurrent re-registration cannot split them.
        if getattr(self, "issuer", None) is None:
            with LOCK:
                self.issuer = ISSUERS.get(issuer)
        return self.issuer if self.issuer and self.issuer.issuer == issuer else None

    def resolve_client_public_key(self, client):
        return client.key

    def process_assertion_claims(self, assertion):
        try:
            return super().process_assertion_claims(assertion)
        except InvalidGrantError as e:
            # joserfc's bad_signature has no description: name the error.
            if not e.description and isinstance(e.__cause__, JoseError):
                e.description = e.__cause__.description or e.__cause__.error
            raise

    def verify_claims(self, claims):
        # Authlib's own check uses real time and a fixed leeway: each issuer
        # here has its own clock, no leeway, and more rules.
        issuer = self.issuer
        try:
            claims_registry(issuer, issuer.audience, True).validate(claims)
        except JoseError as e:
            raise InvalidGrantError(description=e.description) from None
        if claims["exp"] - claims["iat"] > issuer.max_lifetime:
            raise InvalidGrantError(
                description=f"The assertion's lifetime (exp - iat) exceeds {issuer.max_lifetime} s"
            )
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise InvalidGrantError(description="Claim 'scope' must be a space-separated string")
        jti = claims.get("jti")
        if jti is not None:
            with LOCK:
                now = issuer.now()
                for old in [j for j, exp in issuer.used_jtis.items() if exp <= now]:
                    del issuer.used_jtis[old]
                if jti in issuer.used_jtis:
                    raise InvalidGrantError(description="The assertion's jti was already used")
                issuer.used_jtis[jti] = claims["exp"]
        self.claims = claims

    def authenticate_user(self, subject):
        # Domain-wide delegation: the issuer may act only for its subjects.
        subjects = self.request.client.subjects
        if subjects is not None and subject not in subjects:
            return None
        return subject

    def has_granted_permission(self, client, user):
        return True

    def create_token_response(self):
        # The scope is the assertion's "scope" claim (Google) or the form's.
        scope = self.claims.get("scope") or self.request.payload.scope
        token = self.generate_token(scope=scope, user=self.request.user, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def save_token(token, req):
    client = req.client
    with LOCK:
        TOKENS[token["access_token"]] = {
            "issuer": client.issuer,
            "subject": req.user or client.issuer,
            "scope": token.get("scope") or None,
            "expires_at": client.now() + token["expires_in"],
        }


app = Flask(__name__)
server = AuthorizationServer(app, query_client=lambda client_id: None, save_token=save_token)
server.register_token_generator(
    "default",
    BearerTokenGenerator(
        access_token_generator=lambda **_: secrets.token_urlsafe(32),
        expires_generator=lambda client, grant_type: client.token_ttl,
    ),
)
server.register_grant(JWTBearer)


def json_error(status, body, headers=None):
    resp = jsonify(body)
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


@app.get("/health")
def health():
    return jsonify({"ok": True})


@app.post("/admin/issuers")
def register_issuer():
    body = request.get_json(force=True, silent=True) or {}
    name = body.get("issuer")
    if not isinstance(name, str) or not name:
        return json_error(400, {"error": "issuer is required"})
    try:
        key = import_public_key(body.get("public_key") or "")
    except (ValueError, TypeError) as e:
        return json_error(400, {"error": f"bad public_key: {e}"})
    subjects = body.get("subjects")
    if subjects is not None and not (isinstance(subjects, list) and all(isinstance(s, str) for s in subjects)):
        return json_error(400, {"error": "subjects must be a list of strings or null"})
    new = Issuer(
        issuer=name,
        key=key,
        subjects=subjects,
        token_ttl=int(body.get("token_ttl", 3600)),
        clock_offset=int(body.get("clock_offset", 0)),
        max_lifetime=int(body.get("max_lifetime", 3600)),
        audience=body.get("audience") or TOKEN_URL,
        bearer_audience=body.get("bearer_audience") or "jwt-demo-api",
        bearer_max_lifetime=int(body.get("bearer_max_lifetime", 1200)),
        kid=body.get("kid"),
    )
    with LOCK:
        old = ISSUERS.get(name)
        if old is not None:
            new.used_jtis, new.faults, new.stats = old.used_jtis, old.faults, old.stats
            new.fault_jtis = old.fault_jtis
        ISSUERS[name] = new
    log.info("issuer %r %s", name, "replaced" if old else "registered")
    return jsonify({"issuer": name}), 201


@app.delete("/admin/issuers/<path:name>")
def delete_issuer(name):
    with LOCK:
        if ISSUERS.pop(name, None) is None:
            return json_error(404, {"error": "unknown issuer"})
        for tok in [t for t, v in TOKENS.items() if v["issuer"] == name]:
            del TOKENS[tok]
    log.info("issuer %r deleted", name)
    return Response(status=204)


@app.post("/admin/issuers/<path:name>/faults")
def add_fault(name):
    body = request.get_json(force=True, silent=True) or {}
    status, count, retry_after = body.get("status"), body.get("count", 1), body.get("retry_after")
    if status not in (503, 429) or not isinstance(count, int) or count < 0:
        return json_error(400, {"error": "status must be 503 or 429, count a non-negative int"})
    with LOCK:
        issuer = ISSUERS.get(name)
        if issuer is None:
            return json_error(404, {"error": "unknown issuer"})
        issuer.faults.append([status, count, retry_after])
    return jsonify({"issuer": name, "status": status, "count": count, "retry_after": retry_after})


@app.get("/admin/issuers/<path:name>/stats")
def stats(name):
    with LOCK:
        issuer = ISSUERS.get(name)
        if issuer is None:
            return json_error(404, {"error": "unknown issuer"})
        return jsonify(dict(issuer.stats, fault_jtis=len(issuer.fault_jtis)))


def take_fault(issuer: Issuer):
    """The next pending fault of the issuer, counted down (under LOCK)."""
    while issuer.faults:
        fault = issuer.faults[0]
        if fault[1] > 0:
            fault[1] -= 1
            return fault[0], fault[2]
        issuer.faults.pop(0)
    return None


@app.post("/token")
def token():
    ledger(request.form.get("assertion"))
    name = unverified_iss(request.form.get("assertion") or "")
    with LOCK:
        issuer = ISSUERS.get(name) if name else None
        fault = None
        if issuer is not None:
            issuer.stats["token_requests"] += 1
            fault = take_fault(issuer)
            if fault:
                issuer.fault_jtis.add(str(unverified_claim(request.form.get("assertion") or "", "jti")))
                error = "temporarily_unavailable" if fault[0] == 503 else "slow_down"
                st = issuer.stats
                st["refused"] += 1
                st["faults_served"] += 1
                st["last_error"], st["last_error_description"] = error, "injected fault"
    if fault:
        log.info("token issuer=%r fault=%d", name, fault[0])
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if fault[1] is not None:
            headers["Retry-After"] = str(fault[1])
        return json_error(fault[0], {"error": error}, headers)

    resp = server.create_token_response()
    body = resp.get_json(silent=True) or {}
    error = None if resp.status_code == 200 else body.get("error", "server_error")
    with LOCK:
        issuer = ISSUERS.get(name) if name else None
        if issuer is not None:
            st = issuer.stats
            if error is None:
                st["tokens_issued"] += 1
            else:
                st["refused"] += 1
                st["last_error"], st["last_error_description"] = error, body.get("error_description")
    log.info("token issuer=%r %s", name, "issued" if error is None else f"error={error}")
    return resp


def bearer_credential() -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, cred = auth.partition(" ")
    return cred.strip() if scheme.lower() == "bearer" and cred.strip() else None


def invalid_token(reason=None):
    body = {"error": "invalid_token"}
    if reason:
        body["reason"] = reason
    return json_error(401, body, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


@app.get("/api/whoami")
def api_whoami():
    cred = bearer_credential()
    with LOCK:
        tok = TOKENS.get(cred) if cred else None
        issuer = ISSUERS.get(tok["issuer"]) if tok else None
        if tok is None or issuer is None or issuer.now() >= tok["expires_at"]:
            return invalid_token()
        return jsonify({"issuer": tok["issuer"], "subject": tok["subject"], "scope": tok["scope"]})


@app.get("/bearer/whoami")
def bearer_whoami():
    """App Store Connect style: the self-signed JWT is the credential."""
    cred = bearer_credential()
    if not cred:
        return invalid_token("missing_credential")
    name = unverified_iss(cred)
    with LOCK:
        issuer = ISSUERS.get(name) if name else None
    if issuer is None:
        return invalid_token("unknown_issuer")
    if unverified_alg(cred) not in ALGORITHMS:
        return invalid_token("alg_not_allowed")
    try:
        claims = jwt.decode(cred, issuer.key, algorithms=list(ALGORITHMS)).claims
    except JoseError:
        return invalid_token("bad_signature")
    except ValueError:
        return invalid_token("malformed")
    try:
        claims_registry(issuer, issuer.bearer_audience, False).validate(claims)
    except MissingClaimError as e:
        return invalid_token(f"missing_claim: {e.description}")
    except ExpiredTokenError:
        return invalid_token("expired")
    except InvalidClaimError as e:
        reason = {"aud": "wrong_audience", "iat": "iat_in_future", "iss": "wrong_issuer"}
        return invalid_token(reason.get(e.claim, f"invalid_claim: {e.claim}"))
    except JoseError as e:
        return invalid_token(f"invalid_claims: {e.error}")
    if claims["exp"] - claims["iat"] > issuer.bearer_max_lifetime:
        return invalid_token("lifetime_too_long")
    return jsonify({"issuer": issuer.issuer, "subject": claims.get("sub") or issuer.issuer})


def demo_key_file(path: str) -> None:
    """Makes a service-account key pair, registers its public key at the
    running server, and writes a Google-style JSON key file (mode 600) for
    the demo page's `service-accounts` integration to upload."""
    import urllib.request

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "demo@broker.iam.example.test"
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/admin/issuers",
        data=json.dumps({"issuer": email, "public_key": public}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "type": "service_account",
                "project_id": "demo",
                "private_key_id": secrets.token_hex(8),
                "private_key": private,
                "client_email": email,
                "client_id": "100000000000000000001",
                "token_uri": TOKEN_URL,
            },
            f,
            indent=2,
        )
    print(f"jwt-server: demo service-account key file written to {path}")


if __name__ == "__main__" and sys.argv[1:2] == ["demo-key-file"]:
    demo_key_file(sys.argv[2])
elif __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("authlib").setLevel(logging.WARNING)  # its debug lines print tokens
    log.info("RFC 7523 server on 127.0.0.1:%d (token endpoint %s)", PORT, TOKEN_URL)
    app.run(host="127.0.0.1", port=PORT, threaded=True, use_reloader=False)
