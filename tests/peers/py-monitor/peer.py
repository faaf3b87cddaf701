"""An independent monitor caller: grpcio stubs generated from NSM's own
.proto files drive MonitorConnections through the release passthrough.

Checks, each printed on a line; exits non-zero if one fails:
1. a watcher of the passthrough gets its initial state, an UPDATE for a
   request (this hop's id and index) and a DELETE for its close;
2. the endpoint going away (SIGTERM to --endpoint-pid) reaches the watcher
   as DOWN for the connection still open;
3. behind an endpoint without monitoring (a grpcio NetworkService served
   here, on --bare-listen, that the second passthrough forwards to), nothing
   is reported DOWN: the next event after the request's UPDATE is its
   close's DELETE.
"""

import argparse
import os
import queue
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nsm_stubs  # noqa: E402  (tests/peers/nsm_stubs.py)


def stubs(proto_dir):
    nsm_stubs.generate(proto_dir)
    import connection_pb2, connection_pb2_grpc, networkservice_pb2, networkservice_pb2_grpc
    return connection_pb2, connection_pb2_grpc, networkservice_pb2, networkservice_pb2_grpc


FAILED = []


def check(name, ok, detail=""):
    print(f"{'ok' if ok else 'FAILED'}: {name}{': ' + detail if detail else ''}")
    if not ok:
        FAILED.append(name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="host:port of a passthrough before --endpoint-pid")
    p.add_argument("--endpoint-pid", type=int, required=True)
    p.add_argument("--bare-target", required=True, help="host:port of a passthrough before --bare-listen")
    p.add_argument("--bare-listen", required=True, help="host:port to serve the endpoint without monitoring on")
    p.add_argument("--proto", required=True, help="NSM's pkg/api/networkservice .proto files")
    a = p.parse_args()
    conn_pb2, conn_grpc, ns_pb2, ns_grpc = stubs(a.proto)

    caller_request = nsm_stubs.caller_request

    def watch(channel):
        events = queue.Queue()
        stream = conn_grpc.MonitorConnectionStub(channel).MonitorConnections(
            conn_pb2.MonitorScopeSelector())

        def pump():
            try:
                for event in stream:
                    events.put(event)
            except grpc.RpcError as err:
                events.put(err)
        threading.Thread(target=pump, daemon=True).start()
        return stream, events

    def next_event(events):
        event = events.get(timeout=20)
        if isinstance(event, Exception):
            raise event
        return event

    T = conn_pb2.ConnectionEventType
    # 1 and 2: through the passthrough to the program's endpoint.
    with grpc.insecure_channel(a.target) as channel:
        nsm = ns_grpc.NetworkServiceStub(channel)
        stream, events = watch(channel)
        initial = next_event(events)
        check("initial state", initial.type == T.Value("INITIAL_STATE_TRANSFER"),
              f"{len(initial.connections)} connections")
        reply = nsm.Request(caller_request("py-1"), timeout=5)
        hop = reply.path.path_segments[1]
        update = next_event(events)
        held = update.connections.get(hop.id)
        check("update in this hop's terms",
              update.type == T.Value("UPDATE") and held is not None and held.path.index == 1,
              f"id {hop.id} index {held.path.index if held else None}")
        nsm.Close(reply, timeout=5)
        delete = next_event(events)
        check("delete", delete.type == T.Value("DELETE") and hop.id in delete.connections)
        reply = nsm.Request(caller_request("py-2"), timeout=5)
        second = reply.path.path_segments[1].id
        next_event(events)
        os.kill(a.endpoint_pid, signal.SIGTERM)
        down = next_event(events)
        state = down.connections[second].state if second in down.connections else None
        check("the endpoint going away is DOWN", state == conn_pb2.State.Value("DOWN"),
              conn_pb2.State.Name(state) if state is not None else "not in the event")
        stream.cancel()

    # 3: an endpoint that serves no monitoring.
    class Bare(ns_grpc.NetworkServiceServicer):
        def Request(self, request, context):
            return request.connection

        def Close(self, request, context):
            from google.protobuf import empty_pb2
            return empty_pb2.Empty()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ns_grpc.add_NetworkServiceServicer_to_server(Bare(), server)
    server.add_insecure_port(a.bare_listen)
    server.start()
    with grpc.insecure_channel(a.bare_target) as channel:
        nsm = ns_grpc.NetworkServiceStub(channel)
        stream, events = watch(channel)
        next_event(events)
        reply = nsm.Request(caller_request("py-3"), timeout=5)
        update = next_event(events)
        check("update behind an endpoint without monitoring", update.type == T.Value("UPDATE"))
        # Long enough for the passthrough to have tried the endpoint's
        # monitoring and been refused (it tries as soon as the request ends).
        time.sleep(1)
        nsm.Close(reply, timeout=5)
        after = next_event(events)
        check("nothing DOWN: the next event is the close's DELETE",
              after.type == T.Value("DELETE"), T.Name(after.type))
        stream.cancel()
    server.stop(0)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
