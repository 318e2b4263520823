#!/usr/bin/python3
"""A registry token server for the tests (distribution's token auth spec).

Issues RS256 JWTs signed by a key whose certificate the registry trusts (its
`auth.token.rootcertbundle`), with the certificate in the `x5c` header. Users given
with --user USER:PASS get every action they ask for; anonymous requests get `pull`
with --anonymous-pull, else no access (the registry then answers 401, as Docker Hub does
for a private repository). --identity-token TOKEN accepts that OAuth2 refresh token
(POST, grant_type=refresh_token) for the first user. Every request is appended to --log
as one line: `METHOD WHO SCOPE GRANTED`. The port is written to --port-file once
listening. Run with Debian's python3 (python3-jwt, python3-cryptography).
"""

import argparse
import base64
import json
import os
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--user", action="append", default=[])
    ap.add_argument("--anonymous-pull", action="store_true")
    ap.add_argument("--identity-token")
    ap.add_argument("--expires", type=int, default=300)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    key = open(args.key, "rb").read()
    cert = x509.load_pem_x509_certificate(open(args.cert, "rb").read())
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    users = dict(u.split(":", 1) for u in args.user)
    first_user = args.user[0].split(":", 1)[0] if args.user else None
    lock = threading.Lock()

    def log(line):
        with lock, open(args.log, "a") as f:
            f.write(line + "\n")

    def token(who, scopes):
        access = []
        granted = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if who is None:
                actions = [a for a in actions if a == "pull" and args.anonymous_pull]
            if actions:
                access.append({"type": kind, "name": name, "actions": actions})
                granted.append(f"{name}:{','.join(actions)}")
        now = int(time.time())
        claims = {
            "iss": args.issuer,
            "sub": who or "",
            "aud": args.service,
            "exp": now + args.expires,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signed = jwt.encode(claims, key, algorithm="RS256", headers={"x5c": [x5c]})
        return signed, granted

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def issue(self, method, who, scopes):
            signed, granted = token(who, scopes)
            log(f"{method} {who or '-'} {' '.join(scopes) or '-'} {' '.join(granted) or '-'}")
            self.answer(200, {"token": signed, "access_token": signed,
                              "expires_in": args.expires})

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(url.query)
            scopes = q.get("scope", [])
            who = None
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                try:
                    user, pw = base64.b64decode(auth[6:]).decode().split(":", 1)
                except Exception:
                    user, pw = "", None
                if users.get(user) != pw:
                    log(f"GET refused {' '.join(scopes) or '-'} -")
                    self.answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                    return
                who = user
            self.issue("GET", who, scopes)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(n).decode())
            scopes = form.get("scope", [])
            ok = (form.get("grant_type") == ["refresh_token"] and args.identity_token
                  and form.get("refresh_token") == [args.identity_token])
            if not ok:
                log(f"POST refused {' '.join(scopes) or '-'} -")
                self.answer(401, {"error": "invalid_grant"})
                return
            self.issue("POST", first_user, scopes)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
