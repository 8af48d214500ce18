#!/usr/bin/python3
"""Copies stdin to stdout as it arrives, then exits after N bytes.

usage: cut_stream.py N

A transport cut at byte N: unlike `head -c N`, nothing is held back until N
bytes have arrived, so the peers keep talking until the cut.
"""
import os
import sys


def main():
    left = int(sys.argv[1])
    while left > 0:
        data = os.read(0, min(65536, left))
        if not data:
            break
        view = memoryview(data)
        while view:
            written = os.write(1, view)
            view = view[written:]
        left -= len(data)


if __name__ == "__main__":
    main()
