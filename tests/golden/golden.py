#!/usr/bin/python3
"""Independent encoder for the golden test (Debian's python3-protobuf).

Compiles proto/bimip.proto with protoc into a temporary directory, builds the
same stanzas as tests/unit/test_golden.c and prints one line per stanza:
    <name> <hex of the serialized MessageScheme>
The C test compares those bytes with what nanopb produces.
"""
import importlib
import os
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["protoc", "-I", os.path.join(root, "proto"), "--python_out", tmp,
                    os.path.join(root, "proto", "bimip.proto")], check=True)
    sys.path.insert(0, tmp)
    pb = importlib.import_module("bimip_pb2")

def ident(eid, dev="", node=""):
    return pb.Identity(eid=eid, connection_resource_id=dev, node=node)

cases = []

m = pb.MessageScheme(route=14)
m.text_payload_request.CopyFrom(pb.TextPayloadRequest(
    **{"from": ident("alice@domain.com", "phone")},
    to=[ident("bob@domain.com")], content="Hey Bob!", message_id_local="local-123",
    text_size_count="8", created_at=1764000000123))
cases.append(("text_payload_request", m))

m = pb.MessageScheme(route=13, offset=42)
m.chat_message.CopyFrom(pb.ChatMessage(
    message_id="c1.7", message_id_local="local-123", version=7, chat_id="c1",
    **{"from": ident("alice@domain.com", "phone")}, to=[ident("bob@domain.com")],
    author="receiver", text="Hey Bob!", acknowledgment=1,
    created_at=1764000000123, server_received_at=1764000000200))
cases.append(("chat_message", m))

m = pb.MessageScheme(route=3)
m.awareness_response.CopyFrom(pb.AwarenessResponse(
    **{"from": ident("bob@domain.com")}, to=ident("alice@domain.com", "tab"),
    awareness_identifier="12345", status=1, latitude=6.5244, longitude=3.3792,
    awareness_intention=2, timestamp=-5))
cases.append(("awareness_response", m))

m = pb.MessageScheme(route=5)
m.error_message.CopyFrom(pb.ErrorMessage(code=429, message="rate limit exceeded",
                                         route="14", details=""))
cases.append(("error_message", m))

m = pb.MessageScheme(route=6)
m.pingpong_message.CopyFrom(pb.PingPong(to=ident("client@domain.com"), type=2, status=2,
                                        request_time=1, response_time=3, rtt=2))
cases.append(("pingpong_message", m))

m = pb.MessageScheme(route=18)
m.version_update.CopyFrom(pb.VersionUpdate(to=ident("alice@domain.com", "phone"),
    message_id="c1.7", message_id_local="local-123", type=1, timestamp=99, status=1,
    version=7, chat_id="c1"))
cases.append(("version_update", m))

m = pb.MessageScheme(route=24)
m.message_peer_ack_signal.CopyFrom(pb.MessagePeerAckSignal(
    to=ident("a"), **{"from": ident("b", node="s1")}, message_id="m", method=2,
    timestamp=5, status_code=200, peer=pb.Peer(**{"from": "a"}, to="b", offset=10,
                                                   peer_offset=9)))
cases.append(("message_peer_ack_signal", m))

for name, msg in cases:
    print(name, msg.SerializeToString().hex())
