#!/usr/bin/env python3
"""A webhook receiver for postern's end-to-end tests.

It checks every request as the Standard Webhooks specification tells a
receiver to (https://www.standardwebhooks.com, "Verifying webhook
authenticity"), with nothing but the standard library: the key is the
base64 after "whsec_"; the signed content is "id.timestamp.body"; the
webhook-signature header is a space-separated list of "v1,<base64>", and
one match (compared in constant time) suffices; a timestamp more than five
minutes away from now is refused.

Usage: webhook_receiver.py SECRET_FILE STATUS_FILE LOG_FILE [PORT]

It listens on 127.0.0.1 (PORT, or one the kernel picks) and prints the
port on its first line of output. Each request gets the status named by
STATUS_FILE, read at every request: a space-separated list, one per
request in order, the last repeated ("500 200": the first request fails).
A request whose signature does not verify gets 401. Each request is
appended to LOG_FILE as one JSON line: path, at (the receiver's clock), id,
timestamp, valid, status, body.
"""
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE = 5 * 60

secret_file, status_file, log_file = sys.argv[1:4]
port = int(sys.argv[4]) if len(sys.argv) > 4 else 0
with open(secret_file) as f:
    key = base64.b64decode(f.read().strip().removeprefix("whsec_"))

lock = threading.Lock()
count = 0


def verify(headers, body):
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    sigs = headers.get("webhook-signature", "")
    if not msg_id or not ts.isdigit() or abs(time.time() - int(ts)) > TOLERANCE:
        return False
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256)
    want = base64.b64encode(mac.digest())
    for sig in sigs.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), want):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as postern's client expects

    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        valid = verify(self.headers, body) and self.headers.get("Content-Type") == "application/json"
        with lock:
            with open(status_file) as f:
                statuses = f.read().split()
            status = int(statuses[min(count, len(statuses) - 1)])
            count += 1
            if not valid:
                status = 401
            with open(log_file, "a") as f:
                f.write(json.dumps({"path": self.path, "at": time.time(),
                                    "id": self.headers.get("webhook-id"),
                                    "timestamp": self.headers.get("webhook-timestamp"),
                                    "valid": valid, "status": status,
                                    "body": body.decode()}) + "\n")
        reply = b"ok" if status < 300 else b"not now"
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # postern killed (the crash test) or stopped with a connection
        # open: not the receiver's error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


server = Server(("127.0.0.1", port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
