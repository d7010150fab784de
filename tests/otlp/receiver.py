"""An OTLP trace receiver for keygate's tests, built on OpenTelemetry's published protobuf
definitions (PyPI opentelemetry-proto) and grpcio.

It accepts ExportTraceServiceRequest over OTLP/gRPC and OTLP/HTTP (binary protobuf at
/v1/traces) on loopback ports it chooses, and appends every span it receives to a file as
one JSON object per line: ids in hex, attributes as plain values, the service name.

Usage: receiver.py SPANS_FILE
Prints "grpc=<port> http=<port>" on stdout once both listeners are up, then runs until
it is terminated.
"""

import json
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

SPANS_FILE = sys.argv[1]
LOCK = threading.Lock()


def plain(value):
    """An AnyValue as a JSON value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def record(request):
    """Appends every span of an ExportTraceServiceRequest to the spans file."""
    lines = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: plain(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(json.dumps({
                    "service_name": resource.get("service.name"),
                    "name": span.name,
                    "kind": span.kind,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "attributes": {kv.key: plain(kv.value) for kv in span.attributes},
                    "events": [
                        {"name": e.name,
                         "attributes": {kv.key: plain(kv.value) for kv in e.attributes}}
                        for e in span.events
                    ],
                }))
    with LOCK, open(SPANS_FILE, "a", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        record(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class HttpTraces(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        record(request)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    open(SPANS_FILE, "a", encoding="utf-8").close()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), HttpTraces)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"grpc={grpc_port} http={http.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    http.shutdown()
    server.stop(0)


if __name__ == "__main__":
    main()
