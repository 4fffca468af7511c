"""A port of multi-model-server 1.1.11's ModelResponseDecoder (model-server.jar,
com.amazonaws.ml.mms.util.codec), read off its bytecode with javap: how the front end parses a
worker's reply frame from the part of it that netty has read so far."""
import struct

END, UNDER_RUN = -1, -3
MAX_BUFFER = 6553500  # config.properties max_response_size


class DecoderError(Exception):
    """What the Java decoder throws: the front end then kills the worker and fails the batch."""


class _Buffer:
    def __init__(self, data):
        self.data, self.at = data, 0

    def readable(self):
        return len(self.data) - self.at

    def read_int(self):  # ByteBuf.readInt: IndexOutOfBoundsException when fewer than 4 bytes
        if self.readable() < 4:
            raise DecoderError(f"readerIndex({self.at}) + length(4) exceeds writerIndex({len(self.data)})")
        (value,) = struct.unpack_from("!i", self.data, self.at)
        self.at += 4
        return value

    def read(self, n):
        if n < 0:
            raise DecoderError(f"Invalid message size: {n}")
        if self.readable() < n:
            raise DecoderError(f"readerIndex({self.at}) + length({n}) exceeds writerIndex({len(self.data)})")
        self.at += n
        return self.data[self.at - n:self.at]


def _read_length(buf, limit):  # CodecUtils.readLength
    if buf.readable() < 4:
        return UNDER_RUN
    n = buf.read_int()
    if n > limit:
        raise DecoderError(f"Message size exceed limit: {n}")
    return UNDER_RUN if n > buf.readable() else n


def _read_map(buf, count):  # CodecUtils.readMap: the limit is the bytes already read
    for _ in range(count):
        buf.read(_read_length(buf, buf.readable()))
        buf.read(_read_length(buf, buf.readable()))


def decode(received):
    """``"complete"``, or ``"wait"`` for more bytes; raises DecoderError where the Java code throws."""
    buf = _Buffer(received)
    if buf.readable() < 9:
        return "wait"
    buf.read_int()
    n = _read_length(buf, MAX_BUFFER)
    if n == UNDER_RUN:
        return "wait"
    buf.read(n)
    while True:
        n = _read_length(buf, MAX_BUFFER)
        if n == END:
            return "complete"
        if n == UNDER_RUN:
            return "wait"
        buf.read(n)                                   # request id
        n = _read_length(buf, MAX_BUFFER)
        if n == UNDER_RUN:
            return "wait"
        buf.read(n)                                   # content type
        buf.read_int()                                # status code: not checked
        for reader in (buf.read, lambda k: _read_map(buf, k), buf.read):  # phrase, headers, body
            n = _read_length(buf, MAX_BUFFER)
            if n == UNDER_RUN:
                return "wait"
            reader(n)


def failing_cuts(frame, step=16):
    """The read boundaries (multiples of ``step`` inside the frame: netty's buffer sizes are all
    multiples of 16) at which the front end would throw."""
    failing = []
    for cut in range(step, len(frame), step):
        try:
            decode(frame[:cut])
        except DecoderError:
            failing.append(cut)
    assert decode(frame) == "complete"
    return failing
