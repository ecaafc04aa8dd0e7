"""The double reply in C: the optional accelerator behind protocol.build_reply and EchoSession."""

from _typeshed import ReadableBuffer

def build_reply(data: ReadableBuffer, /) -> bytes:
    """The reply to one batch: every 20-byte chunk, each followed by its byte reversal."""

def reverse_each_chunk(data: ReadableBuffer, /) -> bytes:
    """Every 20-byte chunk of ``data`` reversed in place: the reply's second halves."""

class SessionCore:
    """The per-batch state and rule of ``protocol.EchoSession``, in C."""

    bytes_received: int
    bytes_sent: int
    closing: bool
    _text: bool
    def answer(self, batch: ReadableBuffer, /) -> bytes: ...
