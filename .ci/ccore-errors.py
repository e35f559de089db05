"""A gRPC C-core client (Python's grpcio) reads Roster's largest error as Roster sent it.

C-core refuses trailers beyond its metadata limit as RESOURCE_EXHAUSTED, a code that invites a
retry. A BatchAuthorize of a thousand malformed checks must still reach this client as
INVALID_ARGUMENT with its BadRequest details.

    python .ci/ccore-errors.py --target 127.0.0.1:50051
"""

import argparse
import pathlib
import sys

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples/python/gen"))
from roster.v1 import access_service_pb2 as access  # noqa: E402
from roster.v1 import access_service_pb2_grpc as access_grpc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    target = parser.parse_args().target
    with grpc.insecure_channel(target) as channel:
        stub = access_grpc.AccessServiceStub(channel)
        checks = [
            access.AuthorizeRequest(
                user_id=f" bad{i} ", organization_id="not-a-uuid", permission="nope"
            )
            for i in range(1000)
        ]
        try:
            stub.BatchAuthorize(access.BatchAuthorizeRequest(checks=checks), timeout=10)
        except grpc.RpcError as err:
            code = err.code()
            trailers = dict(err.trailing_metadata() or ())
            details = trailers.get("grpc-status-details-bin", b"")
            if code != grpc.StatusCode.INVALID_ARGUMENT:
                sys.exit(f"expected INVALID_ARGUMENT, got {code}: {err.details()}")
            if not details:
                sys.exit("the BadRequest details did not arrive")
            print(f"C-core client: {code.name}, {len(details)} bytes of details: {err.details()}")
            return
        sys.exit("a batch of malformed checks was accepted")


if __name__ == "__main__":
    main()
