"""Writes slots of an NBD export in random order and prints each acknowledged
write's offset, one per line, flushed, only after the server acknowledged
it. Used by tests/tracker/nbd_lifecycle_test.cc, which SIGKILLs the tracker
while this runs and then checks that every printed write survived.

    nbd_ack_writer.py URI START SLOT_BYTES SLOTS SEED SALT

Slot i covers [START + i*SLOT_BYTES, +SLOT_BYTES) and is filled with the
byte 1 + (i*13 + SALT*29) % 255. Up to 8 writes are in flight. Exits 0 when
every slot was written, 3 when the connection broke (the expected end).
"""

import random
import sys

import nbd


def fill_byte(slot, salt):
    return 1 + (slot * 13 + salt * 29) % 255


def main():
    uri = sys.argv[1]
    start, slot_bytes, slots, seed, salt = (int(a, 0) for a in sys.argv[2:7])
    order = list(range(slots))
    random.Random(seed).shuffle(order)
    h = nbd.NBD()
    h.connect_uri(uri)
    in_flight = {}  # cookie -> offset
    buffers = {}
    try:
        for slot in order:
            while len(in_flight) >= 8:
                h.poll(-1)
                for cookie in list(in_flight):
                    if h.aio_command_completed(cookie):
                        sys.stdout.write("%d\n" % in_flight.pop(cookie))
                        sys.stdout.flush()
            offset = start + slot * slot_bytes
            data = bytes([fill_byte(slot, salt)]) * slot_bytes
            buffers[slot] = nbd.Buffer.from_bytearray(bytearray(data))
            in_flight[h.aio_pwrite(buffers[slot], offset)] = offset
        while in_flight:
            h.poll(-1)
            for cookie in list(in_flight):
                if h.aio_command_completed(cookie):
                    sys.stdout.write("%d\n" % in_flight.pop(cookie))
                    sys.stdout.flush()
    except nbd.Error:
        sys.exit(3)
    h.shutdown()


if __name__ == "__main__":
    main()
