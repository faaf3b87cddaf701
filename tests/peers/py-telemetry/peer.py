"""An independent check of the release program's telemetry: a grpcio OTLP
receiver (OpenTelemetry's own generated collector services), a grpcio NSM
caller with stubs from NSM's own .proto files, and Prometheus's Python
client's text parser.

Checks, each printed on a line; exits non-zero if one fails:
1. a traced caller's request through passthrough -> endpoint (two
   processes, TELEMETRY=true) arrives at the receiver as one trace: the
   passthrough's served span is a child of the caller's span, and the
   endpoint's served span descends from the passthrough's;
2. the passthrough's /metrics (PROMETHEUS=true) parses, and its counts
   match what this caller did: 3 new requests, 1 refresh, 1 close, 1 dial,
   1 client, 2 connections;
3. metrics arrive by OTLP too.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nsm_stubs  # noqa: E402  (tests/peers/nsm_stubs.py)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families


def stubs(proto_dir):
    nsm_stubs.generate(proto_dir)
    import connection_pb2, networkservice_pb2, networkservice_pb2_grpc
    return connection_pb2, networkservice_pb2, networkservice_pb2_grpc


FAILED = []


def check(name, ok, detail=""):
    print(f"{'ok' if ok else 'FAILED'}: {name}{': ' + detail if detail else ''}")
    if not ok:
        FAILED.append(name)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer,
               metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []      # (service, name, trace_id, span_id, parent_span_id)
        self.metrics = []    # (service, name)

    @staticmethod
    def service(resource):
        for kv in resource.attributes:
            if kv.key == "service.name":
                return kv.value.string_value
        return ""

    def Export(self, request, context):
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self.lock:
                for rs in request.resource_spans:
                    svc = self.service(rs.resource)
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            self.spans.append((svc, s.name, s.trace_id.hex(), s.span_id.hex(),
                                               s.parent_span_id.hex()))
            return trace_service_pb2.ExportTraceServiceResponse()
        with self.lock:
            for rm in request.resource_metrics:
                svc = self.service(rm.resource)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self.metrics.append((svc, m.name))
        return metrics_service_pb2.ExportMetricsServiceResponse()


def start(cmd, env):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        sys.exit(f"{cmd} did not start: {line!r}")
    words = line.split()
    url = words[words.index("on") + 1]
    metrics = None
    if "metrics on" in line:
        metrics = line.split("metrics on ")[1].split()[0]
    return proc, url, metrics


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="the release passthrough program")
    p.add_argument("--proto", required=True, help="NSM's pkg/api/networkservice .proto files")
    a = p.parse_args()
    conn_pb2, ns_pb2, ns_grpc = stubs(a.proto)

    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    base = dict(os.environ, RUST_LOG="warn", TELEMETRY="true",
                NSM_OPEN_TELEMETRY_ENDPOINT=f"127.0.0.1:{port}",
                NSM_METRICS_EXPORT_INTERVAL="500ms")
    nse, nse_url, _ = start([a.bin, "--endpoint", "--listen", "tcp://127.0.0.1:0", "--name", "py-nse"], base)
    pt_env = dict(base, PROMETHEUS="true", NSM_PROMETHEUS_LISTEN_ON="127.0.0.1:0")
    pt, pt_url, scrape_url = start([a.bin, "--listen", "tcp://127.0.0.1:0", "--connect-to", nse_url,
                                    "--dial-timeout", "1s", "--name", "py-pt"], pt_env)

    caller_request = nsm_stubs.caller_request

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    caller_span = "b7ad6b7169203331"
    traceparent = f"00-{trace_id}-{caller_span}-01"
    with grpc.insecure_channel(pt_url.removeprefix("tcp://")) as channel:
        nsm = ns_grpc.NetworkServiceStub(channel)
        first = nsm.Request(caller_request("py-1"), timeout=5, metadata=[("traceparent", traceparent)])
        nsm.Request(caller_request("py-2"), timeout=5)
        third = nsm.Request(caller_request("py-3"), timeout=5)
        nsm.Request(ns_pb2.NetworkServiceRequest(connection=first), timeout=5)
        nsm.Close(third, timeout=5)

    with urllib.request.urlopen(scrape_url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "otel_scope_name")))
                samples[key] = samples.get(key, 0) + s.value
        parsed = True
    except Exception as e:  # the check reports it
        parsed, samples = False, {}
        print(e)
    check("/metrics parses as Prometheus text", parsed)

    def value(name, **labels):
        want = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))

    expected = [
        ("new requests", value("connect_requests_total", kind="new", code="OK"), 3),
        ("refreshes", value("connect_requests_total", kind="refresh", code="OK"), 1),
        ("closes", value("connect_closes_total", origin="caller", code="OK"), 1),
        ("dials", value("connect_dials_total", outcome="ok"), 1),
        ("clients", value("connect_clients"), 1),
        ("connections", value("connect_connections"), 2),
    ]
    for what, got, want in expected:
        check(f"/metrics counts the {what}", got == want, f"{got} (expected {want})")

    # A graceful stop exports what each process still holds.
    for proc in (pt, nse):
        proc.send_signal(signal.SIGTERM)
    for proc in (pt, nse):
        proc.wait(timeout=20)
    deadline = time.time() + 10
    while time.time() < deadline:
        with receiver.lock:
            services = {s[0] for s in receiver.spans if s[2] == trace_id and s[1] == "request"}
        if {"py-pt", "py-nse"} <= services:
            break
        time.sleep(0.1)
    with receiver.lock:
        spans = [s for s in receiver.spans if s[2] == trace_id]
        metrics = list(receiver.metrics)
    by_id = {s[3]: s for s in spans}
    if os.environ.get("PEER_DEBUG"):
        print(*spans, sep="\n")
    pt_request = next((s for s in spans if s[0] == "py-pt" and s[1] == "request"), None)
    nse_request = next((s for s in spans if s[0] == "py-nse" and s[1] == "request"), None)
    check("the passthrough's request span is a child of the caller's span",
          pt_request is not None and pt_request[4] == caller_span, str(pt_request))
    linked = False
    if pt_request and nse_request:
        parent = by_id.get(nse_request[4])
        hops = 0
        while parent is not None and parent[0] == "py-pt" and hops < 50:
            if parent[3] == pt_request[3]:
                linked = True
                break
            parent = by_id.get(parent[4])
            hops += 1
    check("the endpoint's request span descends from the passthrough's, in one trace", linked,
          f"{len(spans)} spans in the trace")
    check("metrics arrive by OTLP too",
          ("py-pt", "connect_requests") in metrics, f"{len(metrics)} metric exports")
    server.stop(0)
    if FAILED:
        sys.exit(f"{len(FAILED)} check(s) failed")
    print("all checks passed")


if __name__ == "__main__":
    main()
