"""A multi-node job with no framework: every node sums a vector with all the others over plain TCP sockets.

It reads only jobplane's rendezvous variables, which every backend sets on every node of a job with
resources.nodes > 1: JOBPLANE_NUM_NODES, JOBPLANE_NODE_RANK, JOBPLANE_MASTER_ADDR, JOBPLANE_MASTER_PORT.
Node 0 listens on the master port; the others connect to it. Each round every node sends its vector, node 0
adds them up and sends the sum back to each (a star all-reduce, what NCCL's rings do faster). Each node checks
the sum against what it must be and exits 1 when it is wrong or a peer goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time

HEADER = struct.Struct("!I")


def send(sock: socket.socket, message: object) -> None:
    body = json.dumps(message).encode()
    sock.sendall(HEADER.pack(len(body)) + body)


def receive(sock: socket.socket) -> object:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = sock.recv(size - len(data))
            if not more:
                raise ConnectionError("the peer closed the connection")
            data += more
        return data

    (size,) = HEADER.unpack(exactly(HEADER.size))
    return json.loads(exactly(size))


def local_vector(rank: int, round_: int, size: int) -> list[float]:
    """What node `rank` contributes in a round (a gradient, in training): known, so the sum can be checked."""
    return [float((rank + 1) * (i + 1) + round_) for i in range(size)]


def expected_sum(nodes: int, round_: int, size: int) -> list[float]:
    return [sum(local_vector(rank, round_, size)[i] for rank in range(nodes)) for i in range(size)]


def connect(addr: str, port: int, timeout: float) -> socket.socket:
    """The master may not listen yet when a worker starts: try again until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((addr, port), timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def serve(addr: str, port: int, nodes: int, timeout: float) -> dict[int, socket.socket]:
    """Node 0: accept one connection from every other node; rank -> socket."""
    # On a loopback address (the local backend) listen there only; elsewhere on every interface.
    bind = addr if addr.startswith("127.") else "0.0.0.0"  # noqa: S104 - the nodes reach the master over the network
    server = socket.create_server((bind, port), reuse_port=False)
    server.settimeout(timeout)
    peers: dict[int, socket.socket] = {}
    while len(peers) < nodes - 1:
        conn, _ = server.accept()
        conn.settimeout(timeout)
        hello = receive(conn)
        peers[int(hello["rank"])] = conn
    server.close()
    return peers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=8, help="numbers in each node's vector")
    parser.add_argument("--round-seconds", type=float, default=0.0, help="work between rounds (sleep)")
    parser.add_argument("--timeout", type=float, default=60.0, help="for the rendezvous and each message")
    args = parser.parse_args(argv)
    nodes = int(os.environ["JOBPLANE_NUM_NODES"])
    rank = int(os.environ["JOBPLANE_NODE_RANK"])
    addr, port = os.environ["JOBPLANE_MASTER_ADDR"], int(os.environ["JOBPLANE_MASTER_PORT"])
    print(f"node {rank} of {nodes}: master {addr}:{port}", flush=True)
    try:
        if rank == 0:
            peers = serve(addr, port, nodes, args.timeout)
            print(f"node 0: all {nodes - 1} peers connected", flush=True)
        else:
            master = connect(addr, port, args.timeout)
            send(master, {"rank": rank})
        for round_ in range(args.rounds):
            mine = local_vector(rank, round_, args.size)
            if rank == 0:
                total = list(mine)
                for peer in peers.values():
                    for i, value in enumerate(receive(peer)):
                        total[i] += value
                for peer in peers.values():
                    send(peer, total)
            else:
                send(master, mine)
                total = receive(master)
            if total != expected_sum(nodes, round_, args.size):
                print(f"node {rank}: round {round_} sum is wrong: {total}", file=sys.stderr, flush=True)
                return 1
            print(f"JOBPLANE_METRICS {json.dumps({'round': round_ + 1, 'sum0': total[0]})}", flush=True)
            time.sleep(args.round_seconds)
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"node {rank}: lost the group: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"node {rank}: {args.rounds} all-reduce rounds of {args.size} numbers agree: sum[0]={total[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
