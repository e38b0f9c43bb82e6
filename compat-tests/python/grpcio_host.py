"""A go-plugin host written with Python's grpcio (gRPC core), for tests/python_host.rs.

Usage: grpcio_host.py NETWORK ADDRESS [--tls-ca PEM_FILE | --plugin-cert FIELD6] [--tls-name NAME]
                      [--client-cert PEM_FILE --client-key PEM_FILE] [--ready-timeout SECONDS]

Dials the plugin the way a Python host dials a go-plugin plugin (a `unix:` target for a unix
socket, for which gRPC core sends the percent-encoded socket path as :authority), over TLS when
--tls-ca names the pre-shared CA to trust or --plugin-cert passes the plugin's AutoMTLS
certificate (its handshake line's field 6, unpadded base64 DER), with --tls-name the name to
check it for and --client-cert/--client-key the host's own (AutoMTLS: the one the plugin got in
PLUGIN_CLIENT_CERT), then calls
grpc.health.v1.Health/Check("plugin"), grpctest.Test/Double(21) and the bidirectional
grpctest.Test/Stream with three messages, and prints one JSON object of what came back. The
messages are encoded by hand (no generated code): the protos are three one-field messages.
"""

import argparse
import base64
import json
import ssl

import grpc


def varint_field(number, value):
    """A protobuf varint field (values below 128 only, all this script sends)."""
    return bytes([number << 3, value])


def read_varint_field(data, number):
    """The value of a one-byte-varint field `number` in `data`, or None."""
    if len(data) >= 2 and data[0] == number << 3:
        return data[1]
    return None


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_channel(args):
    """The channel to the plugin: plaintext, or TLS as the flags say."""
    target = "unix:" + args.address if args.network == "unix" else args.address
    if args.plugin_cert is not None:
        der = base64.b64decode(args.plugin_cert + "=" * (-len(args.plugin_cert) % 4))
        roots = ssl.DER_cert_to_PEM_cert(der).encode()
    elif args.tls_ca is not None:
        roots = read(args.tls_ca)
    else:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=read(args.client_key) if args.client_key else None,
        certificate_chain=read(args.client_cert) if args.client_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.tls_name)] if args.tls_name else []
    return grpc.secure_channel(target, creds, options=options)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("network")
    parser.add_argument("address")
    parser.add_argument("--tls-ca")
    parser.add_argument("--plugin-cert")
    parser.add_argument("--tls-name")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    parser.add_argument("--ready-timeout", type=float, default=10)
    args = parser.parse_args()
    out = {}
    with open_channel(args) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.ready_timeout)
        except grpc.FutureTimeoutError:
            # Never connected (e.g. the TLS handshake failed on every attempt).
            print(json.dumps({"ready": False}))
            return
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
