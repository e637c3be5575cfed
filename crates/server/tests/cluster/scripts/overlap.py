"""Sends pairs of overlapping requests back to back over one NBD connection, many pairs in
flight at once, with libnbd's aio calls: write/write, trim/write, zero/write and write/trim.

Usage: overlap.py URI SEED PAIRS SPAN [BASE]
Each pair's first request covers 64 KiB at a random 4 KiB-aligned offset in [BASE, BASE+SPAN)
(BASE defaults to 0), the second
overlaps it at a random shift. At most 16 pairs are in flight; a flush ends the run. Exits 1 if
any request failed. Run with /usr/bin/python3 (the interpreter Debian's python3-libnbd is for).
"""
import random
import sys

import nbd

KIB = 1024
LEN = 64 * KIB


def main():
    uri, seed, pairs, span = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    base = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    in_flight = []
    kinds = ["write/write", "trim/write", "zero/write", "write/trim"]

    def issue(kind, off, fill):
        if kind == "write":
            buf = nbd.Buffer.from_bytearray(bytearray([fill]) * LEN)
            return h.aio_pwrite(buf, off), buf
        if kind == "trim":
            return h.aio_trim(LEN, off), None
        return h.aio_zero(LEN, off), None

    def reap(limit):
        while len(in_flight) > limit:
            h.poll(-1)
            for entry in list(in_flight):
                if h.aio_command_completed(entry[0]):
                    in_flight.remove(entry)

    for i in range(pairs):
        first, second = rng.choice(kinds).split("/")
        off = base + rng.randrange(0, (span - 2 * LEN) // (4 * KIB)) * 4 * KIB
        shift = rng.randrange(0, LEN // (4 * KIB)) * 4 * KIB
        in_flight.append(issue(first, off, 1 + (2 * i) % 255))
        in_flight.append(issue(second, off + shift, 1 + (2 * i + 1) % 255))
        reap(32)
    reap(0)
    h.flush()
    h.shutdown()


if __name__ == "__main__":
    try:
        main()
    except nbd.Error as e:
        print(f"overlap.py: {e}", file=sys.stderr)
        sys.exit(1)
