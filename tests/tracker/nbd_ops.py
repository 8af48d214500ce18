"""A libnbd client that performs the operations named on its command line.

Used by tests/tracker/nbd_libnbd_test.cc: the C++ test decides what to send
and computes the expected journal and volume itself; this script only
talks NBD (through libnbd, a real client) and checks each reply.

    nbd_ops.py URI OP [OP ...]

OPs (fields separated by ':'; numbers may be decimal or 0x hex):
    write:OFF:LEN:BYTE[:fua]        write LEN bytes of BYTE
    read:OFF:LEN:BYTE               read and expect every byte to be BYTE
    zero:OFF:LEN[:nohole][:fastzero][:fua]
    trim:OFF:LEN[:fua]
    flush
    fail:ERRNO:CMD:OFF:LEN[:flags=N] send CMD (write, read, trim, zero,
                                    blockstatus) with libnbd's client-side
                                    checks off and expect the server to
                                    answer errno ERRNO (e.g. EINVAL, or
                                    EINVAL|ENOSPC for either)
    writes:OFF:LEN:COUNT:STRIDE:BYTE  COUNT writes (up to 16 in flight) at
                                    OFF + i*STRIDE
    blockstatus:OFF:LEN[:reqone]    base:allocation of the range; prints a
                                    JSON line {"extents": [[off, len, flags]...]}
    size:N                          expect the export to be N bytes

Exit status 0 when every reply was as expected; otherwise 1 with the failing
op on stderr. Needs python3-libnbd (Debian's /usr/bin/python3).
"""

import errno
import json
import sys

import nbd


def num(text):
    return int(text, 0)


def fail(op, message):
    sys.stderr.write("nbd_ops.py: %s: %s\n" % (op, message))
    sys.exit(1)


def flags_of(words):
    flags = 0
    for w in words:
        if w == "fua":
            flags |= nbd.CMD_FLAG_FUA
        elif w == "nohole":
            flags |= nbd.CMD_FLAG_NO_HOLE
        elif w == "fastzero":
            flags |= nbd.CMD_FLAG_FAST_ZERO
        elif w == "reqone":
            flags |= nbd.CMD_FLAG_REQ_ONE
        elif w.startswith("flags="):
            flags |= num(w[6:])
        else:
            raise ValueError("unknown flag word " + w)
    return flags


def block_status(h, offset, length, flags):
    extents = []

    def callback(metacontext, at, entries, err):
        if metacontext != nbd.CONTEXT_BASE_ALLOCATION:
            return 0
        pos = at
        for i in range(0, len(entries), 2):
            extents.append([pos, entries[i], entries[i + 1]])
            pos += entries[i]
        return 0

    h.block_status(length, offset, callback, flags)
    return extents


def run(h, op):
    words = op.split(":")
    kind = words[0]
    if kind == "write":
        offset, length, byte = num(words[1]), num(words[2]), num(words[3])
        h.pwrite(bytes([byte]) * length, offset, flags_of(words[4:]))
    elif kind == "read":
        offset, length, byte = num(words[1]), num(words[2]), num(words[3])
        data = h.pread(length, offset)
        if data != bytes([byte]) * length:
            bad = next(i for i in range(length) if data[i] != byte)
            fail(op, "byte %d is 0x%02x, expected 0x%02x" % (offset + bad, data[bad], byte))
    elif kind == "zero":
        h.zero(num(words[2]), num(words[1]), flags_of(words[3:]))
    elif kind == "trim":
        h.trim(num(words[2]), num(words[1]), flags_of(words[3:]))
    elif kind == "flush":
        h.flush()
    elif kind == "size":
        if h.get_size() != num(words[1]):
            fail(op, "export size is %d" % h.get_size())
    elif kind == "writes":
        offset, length, count, stride, byte = (num(w) for w in words[1:6])
        buf = nbd.Buffer.from_bytearray(bytearray([byte]) * length)
        in_flight = []
        for i in range(count):
            while len(in_flight) >= 16:
                h.poll(-1)
                in_flight = [c for c in in_flight if not h.aio_command_completed(c)]
            in_flight.append(h.aio_pwrite(buf, offset + i * stride))
        while in_flight:
            h.poll(-1)
            in_flight = [c for c in in_flight if not h.aio_command_completed(c)]
    elif kind == "blockstatus":
        offset, length = num(words[1]), num(words[2])
        flags = flags_of(words[3:])
        if flags & nbd.CMD_FLAG_REQ_ONE:
            extents = block_status(h, offset, length, flags)
        else:
            extents = []
            at = offset
            while at < offset + length:
                got = block_status(h, at, offset + length - at, flags)
                if not got:
                    fail(op, "no extents at %d" % at)
                extents += got
                at = got[-1][0] + got[-1][1]
        print(json.dumps({"op": op, "extents": extents}), flush=True)
    elif kind == "fail":
        expected = [getattr(errno, name) for name in words[1].split("|")]
        cmd, offset, length = words[2], num(words[3]), num(words[4])
        flags = flags_of(words[5:])
        strict = h.get_strict_mode()
        h.set_strict_mode(0)
        try:
            if cmd == "write":
                h.pwrite(b"\xee" * length, offset, flags)
            elif cmd == "read":
                h.pread(length, offset, flags)
            elif cmd == "trim":
                h.trim(length, offset, flags)
            elif cmd == "zero":
                h.zero(length, offset, flags)
            elif cmd == "blockstatus":
                block_status(h, offset, length, flags)
            else:
                fail(op, "unknown command " + cmd)
        except nbd.Error as e:
            if e.errnum not in expected:
                fail(op, "server answered %s (%s), expected %s" % (e.errno, e.string, words[1]))
        else:
            fail(op, "the server accepted it, expected " + words[1])
        finally:
            h.set_strict_mode(strict)
        if not h.aio_is_ready():
            fail(op, "the connection did not survive the error")
    else:
        fail(op, "unknown op")


def main():
    if len(sys.argv) < 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(sys.argv[1])
    for op in sys.argv[2:]:
        try:
            run(h, op)
        except nbd.Error as e:
            fail(op, "libnbd error: %s (%s)" % (e.string, e.errno))
    h.shutdown()


if __name__ == "__main__":
    main()
