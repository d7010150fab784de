"""Calls keygate.v1.Authorizer/Authorize over TLS with grpcio, an implementation of gRPC and
TLS independent of keygate's, and prints the answer as one JSON object.

Usage: authorize.py ADDR CA_FILE KEY [CERT_FILE KEY_FILE]

The messages are described here with only the fields this client uses (protobuf skips the
others), so no generated code or proto compiler is needed. A call that fails prints
{"error": "<gRPC status code>", "details": "..."}.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FIELD = descriptor_pb2.FieldDescriptorProto


def message_classes():
    """AuthorizeRequest and AuthorizeResponse, with the fields this client reads or writes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="keygate_client.proto", package="keygate.v1", syntax="proto3"
    )
    fields = {
        "AuthorizeRequest": [("key", 1, FIELD.TYPE_STRING), ("path", 5, FIELD.TYPE_STRING)],
        "AuthorizeResponse": [
            ("code", 1, FIELD.TYPE_INT32),
            ("allowed", 2, FIELD.TYPE_BOOL),
            ("http_status", 3, FIELD.TYPE_UINT32),
            ("owner_id", 6, FIELD.TYPE_STRING),
        ],
    }
    for name, message_fields in fields.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in message_fields:
            message.field.add(
                name=field_name, number=number, type=kind, label=FIELD.LABEL_OPTIONAL
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"keygate.v1.{name}"))
        for name in fields
    )


def main(addr, ca_file, key, cert_file=None, key_file=None):
    request_class, response_class = message_classes()
    read = lambda path: open(path, "rb").read() if path else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca_file),
        private_key=read(key_file),
        certificate_chain=read(cert_file),
    )
    with grpc.secure_channel(addr, credentials) as channel:
        authorize = channel.unary_unary(
            "/keygate.v1.Authorizer/Authorize",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            answer = authorize(request_class(key=key, path="/v1/things"), timeout=20)
        except grpc.RpcError as error:
            print(json.dumps({"error": error.code().name, "details": error.details()}))
            return
    print(
        json.dumps(
            {
                "code": answer.code,
                "allowed": answer.allowed,
                "http_status": answer.http_status,
                "owner_id": answer.owner_id,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
