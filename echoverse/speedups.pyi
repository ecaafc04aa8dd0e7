"""The double reply in C: the optional accelerator behind protocol.build_reply."""

from _typeshed import ReadableBuffer

def build_reply(data: ReadableBuffer, /) -> bytes:
    """The reply to one batch: every 20-byte chunk, each followed by its byte reversal."""

def reverse_each_chunk(data: ReadableBuffer, /) -> bytes:
    """Every 20-byte chunk of ``data`` reversed in place: the reply's second halves."""
