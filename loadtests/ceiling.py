"""Trivial endpoints for measuring the load generator's own ceiling (`--ceiling` in the locustfiles).

    python -m loadtests.ceiling http  --port 8799       every HTTP request -> 200 "ok" (keep-alive)
    python -m loadtests.ceiling grpc  --port 8798       every unary gRPC call -> an empty message
    python -m loadtests.ceiling kafka --bootstrap 127.0.0.1:9092 --requests-topic R --results-topic S
                                                        every request record -> a result record with its key

The same Locust users, sent at one of these, measure how many requests per second the client
itself can make on this machine: the server side does next to nothing (HTTP: a raw asyncio
protocol that reads Content-Length and answers a canned response; gRPC: a generic handler that
never decodes the request; Kafka: an echo that never parses JSON), so the figure is the client's.
A load-test figure within 80% of it says more about the client than about the server
(`loadtests/report.py` marks it client-bound).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from concurrent import futures

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class _Ok(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[:end + 4 + length]
            self.transport.write(OK)


def serve_http(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Ok, "127.0.0.1", port, backlog=1024)
        print(f"ceiling http on 127.0.0.1:{port}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_grpc(port: int) -> None:
    import grpc

    def empty(_request: bytes, _context) -> bytes:
        return b""

    class Handler(grpc.GenericRpcHandler):
        def service(self, _details):
            return grpc.unary_unary_rpc_method_handler(empty)  # raw bytes in and out: nothing decoded

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"ceiling grpc on 127.0.0.1:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


def serve_kafka(bootstrap: str, requests_topic: str, results_topic: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from services.kafka.topics import SCORING_PARTITIONS, ensure_topics, plain_topic

    ensure_topics(bootstrap, [plain_topic(t, SCORING_PARTITIONS) for t in (requests_topic, results_topic)])
    # Every partition, from the end, no group: nothing produced after the ready line is missed.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=5, max_poll_records=5000)
    tps = [TopicPartition(requests_topic, p) for p in range(SCORING_PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1, batch_size=1024 * 1024)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    print(f"ceiling kafka {requests_topic} -> {results_topic} on {bootstrap}", flush=True)
    while not stop["now"]:
        for batch in consumer.poll(timeout_ms=100).values():
            for record in batch:
                producer.send(results_topic, key=record.key, value=b"{}", partition=record.partition)
        producer.flush()
    consumer.close()
    producer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.ceiling", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("http", "grpc"):
        sub.add_parser(kind).add_argument("--port", type=int, required=True)
    k = sub.add_parser("kafka")
    k.add_argument("--bootstrap", required=True)
    k.add_argument("--requests-topic", required=True)
    k.add_argument("--results-topic", required=True)
    args = parser.parse_args(argv)
    if args.kind == "http":
        serve_http(args.port)
    elif args.kind == "grpc":
        serve_grpc(args.port)
    else:
        serve_kafka(args.bootstrap, args.requests_topic, args.results_topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
