"""A go-plugin host written with Python's grpcio (gRPC core), for tests/python_host.rs.

Usage: grpcio_host.py NETWORK ADDRESS

Dials the plugin the way a Python host dials a go-plugin plugin (a `unix:` target for a unix
socket, for which gRPC core sends the percent-encoded socket path as :authority), then calls
grpc.health.v1.Health/Check("plugin"), grpctest.Test/Double(21) and the bidirectional
grpctest.Test/Stream with three messages, and prints one JSON object of what came back. The
messages are encoded by hand (no generated code): the protos are three one-field messages.
"""

import json
import sys

import grpc


def varint_field(number, value):
    """A protobuf varint field (values below 128 only, all this script sends)."""
    return bytes([number << 3, value])


def read_varint_field(data, number):
    """The value of a one-byte-varint field `number` in `data`, or None."""
    if len(data) >= 2 and data[0] == number << 3:
        return data[1]
    return None


def main():
    network, address = sys.argv[1], sys.argv[2]
    target = "unix:" + address if network == "unix" else address
    out = {}
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        raw = lambda b: b  # noqa: E731 (identity (de)serializer: bytes in, bytes out)
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=raw, response_deserializer=raw
        )
        # HealthCheckRequest{service: "plugin"}; HealthCheckResponse.status is field 1.
        health = check(b"\x0a\x06plugin", timeout=10)
        out["health_status"] = read_varint_field(health, 1)
        double = channel.unary_unary(
            "/grpctest.Test/Double", request_serializer=raw, response_deserializer=raw
        )
        # TestRequest.Input is field 1, TestResponse.Output field 2.
        out["double"] = read_varint_field(double(varint_field(1, 21), timeout=10), 2)
        stream = channel.stream_stream(
            "/grpctest.Test/Stream", request_serializer=raw, response_deserializer=raw
        )
        replies = stream(iter([varint_field(1, n) for n in (1, 2, 3)]), timeout=10)
        out["stream"] = [read_varint_field(r, 2) for r in replies]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
