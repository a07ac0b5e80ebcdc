#!/usr/bin/env python3
"""Checks GCS V4 signed URLs as Google's storage does, in front of an emulator.

fake-gcs-server serves signed-URL downloads without checking the signature
or the expiry. This server stands where a signed URL's host is: it checks
a request's signature (GOOG4-RSA-SHA256, against the signing key's public
half) and its expiry, following Google's published V4 algorithm, written
independently of the signer under test; then it fetches the object from
the emulator's JSON API and streams it back, Range included.

    gcs_signed_urls.py PORT UPSTREAM_URL PUBLIC_KEY_PEM ACCOUNT

GET /_stats answers {"verified": N, "refused": {"reason": N, ...}}.
"""

import datetime
import hashlib
import http.server
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

PORT = int(sys.argv[1])
UPSTREAM = sys.argv[2].rstrip("/")
with open(sys.argv[3], "rb") as f:
    PUBLIC_KEY = serialization.load_pem_public_key(f.read())
ACCOUNT = sys.argv[4]

STATS = {"verified": 0, "refused": {}}
LOCK = threading.Lock()


def quote(s):
    return urllib.parse.quote(s, safe="-_.~")


def check(method, raw_path, raw_query, headers):
    """Returns None when the request is signed and current, else a reason."""
    pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
    params = dict(pairs)
    for name in ["X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires", "X-Goog-SignedHeaders", "X-Goog-Signature"]:
        if name not in params:
            return "MissingSecurityHeader"
    if params["X-Goog-Algorithm"] != "GOOG4-RSA-SHA256":
        return "InvalidAlgorithm"
    account, _, scope = params["X-Goog-Credential"].partition("/")
    if account != ACCOUNT:
        return "WrongAccount"
    date = datetime.datetime.strptime(params["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if not scope.startswith(params["X-Goog-Date"][:8] + "/"):
        return "ScopeDateMismatch"
    expires = int(params["X-Goog-Expires"])
    if expires > 604800:
        return "ExpiresTooLong"
    if datetime.datetime.now(datetime.timezone.utc) > date + datetime.timedelta(seconds=expires):
        return "ExpiredToken"
    signed = params["X-Goog-SignedHeaders"].split(";")
    if "host" not in signed:
        return "HostNotSigned"
    canonical_query = "&".join(
        f"{quote(k)}={quote(v)}" for k, v in sorted(pairs) if k != "X-Goog-Signature"
    )
    canonical_headers = "".join(f"{h}:{(headers.get(h) or '').strip()}\n" for h in signed)
    canonical_request = "\n".join(
        [method, raw_path, canonical_query, canonical_headers, params["X-Goog-SignedHeaders"], "UNSIGNED-PAYLOAD"]
    )
    to_sign = "\n".join(
        ["GOOG4-RSA-SHA256", params["X-Goog-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    try:
        PUBLIC_KEY.verify(bytes.fromhex(params["X-Goog-Signature"]), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return "SignatureDoesNotMatch"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/xml"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        raw_path, _, raw_query = self.path.partition("?")
        if raw_path == "/_stats":
            with LOCK:
                return self.reply(200, json.dumps(STATS).encode(), "application/json")
        reason = check(self.command, raw_path, raw_query, {k.lower(): v for k, v in self.headers.items()})
        if reason:
            with LOCK:
                STATS["refused"][reason] = STATS["refused"].get(reason, 0) + 1
            status = 400 if reason == "ExpiredToken" else 403
            return self.reply(status, f"<Error><Code>{reason}</Code></Error>".encode())
        with LOCK:
            STATS["verified"] += 1
        bucket, _, obj = raw_path.lstrip("/").partition("/")
        url = f"{UPSTREAM}/download/storage/v1/b/{bucket}/o/{quote(urllib.parse.unquote(obj))}?alt=media"
        req = urllib.request.Request(url, method=self.command)
        if "Range" in self.headers:
            req.add_header("Range", self.headers["Range"])
        try:
            resp = urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            resp = e
        self.send_response(resp.status)
        for h in ["Content-Type", "Content-Length", "Content-Range", "Accept-Ranges"]:
            if resp.headers.get(h):
                self.send_header(h, resp.headers[h])
        self.end_headers()
        if self.command != "HEAD":
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                self.wfile.write(chunk)


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
