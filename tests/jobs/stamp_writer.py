#!/usr/bin/python3
"""Writes sequence-stamped blocks through NBD, one at a time, until told to stop.

usage: stamp_writer.py SOCKET STOP_FILE READY_FILE EXPORT...

Write number s (s = 1, 2, ...) fills block (s mod N) of the concatenation of
the exports (N blocks of 4 KiB in all) with the 16-byte little-endian stamp
(s, block) repeated. Each write waits for its reply before the next starts,
so at any instant the volumes hold, for some S, the last write at or before
S in every block. The first N writes stamp every block once; READY_FILE is
written after them. On stop, the number of the last write is printed.
"""
import os
import struct
import sys

import nbd

BLOCK = 4096


def main():
    sock, stop_file, ready_file = sys.argv[1:4]
    exports = sys.argv[4:]
    handles, counts = [], []
    for name in exports:
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(sock)
        handles.append(h)
        counts.append(h.get_size() // BLOCK)
    total = sum(counts)

    def write(seq):
        block = seq % total
        index = block
        for h, n in zip(handles, counts):
            if index < n:
                h.pwrite(struct.pack("<QQ", seq, block) * (BLOCK // 16), index * BLOCK)
                return
            index -= n

    seq = 0
    for seq in range(1, total + 1):
        write(seq)
    with open(ready_file, "w") as f:
        f.write(str(seq))
    while not os.path.exists(stop_file):
        seq += 1
        write(seq)
    for h in handles:
        h.flush()
        h.shutdown()
    print(seq)


if __name__ == "__main__":
    main()
