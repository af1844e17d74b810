#!/usr/bin/env python3
"""An upstream that trusts portcullis's signed identity assertion, and nothing else.

Every request must carry the assertion (header X-Portcullis-Assertion by default). It is
verified with PyJWT against the proxy's published keys (PyJWKClient fetches
/.well-known/portcullis/jwks.json and caches it for 5 minutes; a key rotation publishes the
new key before it signs with it, so the cached set knows it in time), then checked for the issuer
(server.public_url), the audience ([assertion] audience, or the route's name), the
algorithm (ES256 or EdDSA, never "none" or HS*), and a lifetime of at most 5 minutes.

Answers 200 with the verified identity as JSON, or 401 with {"error": ...} naming why.

    pip install -r examples/assertion_verifier.requirements.txt
    python3 examples/assertion_verifier.py --jwks https://app.example.com/.well-known/portcullis/jwks.json \
        --issuer https://app.example.com --audience my-app [--port 3000]

It binds 127.0.0.1 and prints "listening on PORT" once it serves (--port 0: any free port).
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt  # PyJWT

ALGORITHMS = ["ES256", "EdDSA"]
MAX_LIFETIME = 300  # seconds: portcullis never signs a longer one


class JWKSClient(jwt.PyJWKClient):
    """PyJWKClient, saying which keys it fetched (on stderr)."""

    def fetch_data(self):
        data = super().fetch_data()
        kids = [str(k.get("kid")) for k in data.get("keys", [])]
        sys.stderr.write(f"verifier: fetched the JWKS: kids {' '.join(kids)}\n")
        sys.stderr.flush()
        return data


def make_verifier(jwks_url, issuer, audience, leeway, lifespan):
    # The key set is cached for `lifespan` seconds; an assertion naming an unknown kid
    # fetches it again, but PyJWT does that at most every 30 s (its cooldown): which is
    # why a rotation first publishes the new key and only later signs with it.
    jwks = JWKSClient(jwks_url, lifespan=lifespan)

    def verify(token):
        key = jwks.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "aud", "sub", "iat", "exp"]},
        )
        if claims["exp"] - claims["iat"] > MAX_LIFETIME:
            raise jwt.InvalidTokenError("lifetime longer than 5 minutes")
        return claims

    return verify


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jwks", required=True, help="the proxy's JWKS URL")
    ap.add_argument("--issuer", required=True, help="portcullis's server.public_url")
    ap.add_argument("--audience", required=True, help="[assertion] audience, or the route's name")
    ap.add_argument("--header", default="X-Portcullis-Assertion")
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--leeway", type=int, default=10, help="clock skew allowed, seconds")
    ap.add_argument("--jwks-lifespan", type=float, default=300, help="seconds the key set is cached")
    args = ap.parse_args()
    verify = make_verifier(args.jwks, args.issuer, args.audience, args.leeway, args.jwks_lifespan)

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def handle_any(self):
            values = self.headers.get_all(args.header) or []
            if len(values) != 1 or not values[0]:
                return self.answer(401, {"error": "missing", "detail": f"exactly one {args.header} header is required"})
            try:
                claims = verify(values[0])
            except jwt.PyJWTError as e:
                # The class names why (ExpiredSignatureError, InvalidSignatureError, ...).
                return self.answer(401, {"error": type(e).__name__, "detail": str(e)})
            self.answer(200, {
                "sub": claims["sub"],
                "email": claims.get("email"),
                "groups": claims.get("groups", []),
                "path": self.path,
                "claims": claims,
            })

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

        def log_message(self, fmt, *a):
            sys.stderr.write("verifier: " + fmt % a + "\n")

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
