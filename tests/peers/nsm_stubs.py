"""grpcio stubs for NSM's networkservice API, generated on the spot from the
.proto files in a folder (NSM's own, or this repository's proto/api), for
the Python peers here."""

import importlib.resources
import sys
import tempfile

from grpc_tools import protoc


def generate(proto_dir):
    """Generates the connectioncontext, connection and networkservice
    modules and puts them on sys.path; exits if protoc fails."""
    out = tempfile.mkdtemp()
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    for name in ("connectioncontext", "connection", "networkservice"):
        code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}",
                            f"--python_out={out}", f"--grpc_python_out={out}",
                            f"{proto_dir}/{name}.proto"])
        if code != 0:
            sys.exit(f"protoc failed on {name}.proto")
    sys.path.insert(0, out)


def caller_request(cid, lifetime=600):
    """A NetworkServiceRequest as an NSC sends it: connection `cid` with
    one path segment whose token expires in `lifetime` seconds. Call after
    generate()."""
    import time
    import connection_pb2
    import networkservice_pb2
    from google.protobuf import timestamp_pb2
    expires = timestamp_pb2.Timestamp()
    expires.FromSeconds(int(time.time()) + lifetime)
    seg = connection_pb2.PathSegment(name="py-nsc", id=cid, expires=expires)
    conn = connection_pb2.Connection(id=cid, network_service="py-ns",
                                     path=connection_pb2.Path(index=0, path_segments=[seg]))
    return networkservice_pb2.NetworkServiceRequest(connection=conn)
