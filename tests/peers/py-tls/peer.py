"""A grpcio caller for the program's TLS mode: NetworkService Request and
Close over mutual TLS, then the same call without a client certificate and
with one from another CA, which must be refused. Prints one line per call;
exits non-zero if any outcome is not the expected one."""

import argparse
import os
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nsm_stubs  # noqa: E402  (tests/peers/nsm_stubs.py)


def stubs(proto_dir):
    nsm_stubs.generate(proto_dir)
    import connection_pb2, networkservice_pb2, networkservice_pb2_grpc
    return connection_pb2, networkservice_pb2, networkservice_pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="host:port of the listener")
    p.add_argument("--proto", required=True, help="the repository's proto/api")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--other-cert", required=True, help="signed by another CA")
    p.add_argument("--other-key", required=True)
    a = p.parse_args()
    connection_pb2, ns_pb2, ns_grpc = stubs(a.proto)

    def call(name, cert, key):
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(a.ca),
            private_key=read(key) if key else None,
            certificate_chain=read(cert) if cert else None)
        with grpc.secure_channel(a.target, creds) as channel:
            stub = ns_grpc.NetworkServiceStub(channel)
            request = ns_pb2.NetworkServiceRequest(
                connection=connection_pb2.Connection(id=name))
            try:
                reply = stub.Request(request, timeout=5)
                stub.Close(reply, timeout=5)
                return "OK", reply.id
            except grpc.RpcError as err:
                return err.code().name, err.details()

    expected = [("mutual-tls", a.cert, a.key, "OK"),
                ("no-certificate", None, None, "UNAVAILABLE"),
                ("other-ca", a.other_cert, a.other_key, "UNAVAILABLE")]
    failed = False
    for name, cert, key, want in expected:
        code, detail = call(name, cert, key)
        ok = code == want
        failed |= not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: {code} ({detail})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
