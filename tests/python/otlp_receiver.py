"""An OTLP/HTTP logs receiver for the tests, decoding with the
OpenTelemetry project's own protobuf definitions (opentelemetry-proto):
every request must parse as an ExportLogsServiceRequest in OTLP's JSON
encoding (unknown fields refused).

Usage: otlp_receiver.py COUNT [REFUSE_FIRST]. Prints "PORT <n>" once
listening, answers the first REFUSE_FIRST requests 503, and once COUNT log
records were accepted prints {"records": [...], "requests": n, "refused":
n, "invalid": [...]} as JSON and exits (after 60 s, with what it has, exit 1).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

want = int(sys.argv[1])
refuse_first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
state = {"records": [], "requests": 0, "refused": 0, "invalid": []}
done = threading.Event()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            state["requests"] += 1
            if state["refused"] < refuse_first:
                state["refused"] += 1
                self.send_response(503)
                self.end_headers()
                return
            try:
                req = json_format.Parse(body, logs_service_pb2.ExportLogsServiceRequest())
            except json_format.ParseError as e:
                state["invalid"].append(str(e))
                self.send_response(400)
                self.end_headers()
                return
            for rl in req.resource_logs:
                resource = json_format.MessageToDict(rl.resource)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        d = json_format.MessageToDict(r)
                        d["resource"] = resource
                        d["scope"] = sl.scope.name
                        state["records"].append(d)
            if len(state["records"]) >= want:
                done.set()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"PORT {server.server_address[1]}", flush=True)
ok = done.wait(60)
with lock:
    print(json.dumps(state), flush=True)
sys.exit(0 if ok else 1)
