#!/usr/bin/python3
"""A real SMTP server for the alert e-mail tests (Debian's python3-aiosmtpd).

STARTTLS is required before anything else and AUTH (PLAIN/LOGIN) after it; every message is
written to OUT/NNNN.eml with OUT/NNNN.json saying who sent it to whom, whether it came over
TLS and who logged in. Prints "ready" once listening; stops when stdin closes.
"""
import argparse
import warnings
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# aiosmtpd 1.4 warns about its own use of a deprecated attribute on every login.
warnings.filterwarnings("ignore", category=DeprecationWarning)


class Handler:
    def __init__(self, out):
        self.out = out
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        base = os.path.join(self.out, f"{self.n:04d}")
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "login": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
            "authenticated": bool(session.authenticated),
        }
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        os.rename(base + ".json.tmp", base + ".json")
        return "250 Message accepted"


def main():
    p = argparse.ArgumentParser()
    for a in ("host", "cert", "key", "out", "user", "password"):
        p.add_argument("--" + a, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == args.password.encode()
        )
        return AuthResult(success=ok, handled=False)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    controller = Controller(
        Handler(args.out),
        hostname=args.host,
        port=args.port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
