"""What both ends of the contract agree on about message size, and how the Multiplex call fills its
messages (worker.proto, ``Worker.Multiplex``): the gateway batching starts and cancels, the worker
batching events, by the same rule."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

MESSAGE_LIMIT_BYTES = 64 << 20  # gRPC's send and receive limit on gateway channels and worker servers
MAX_MESSAGE_BYTES = MESSAGE_LIMIT_BYTES - (64 << 10)  # what one multiplexed item may take, less framing
BATCH_BYTES = 4 << 20  # items are batched up to this size; a larger one goes alone
MAX_ITEMS_PER_MESSAGE = 256


class _Sized(Protocol):
    def ByteSize(self) -> int: ...  # noqa: N802 - protobuf's name


T = TypeVar("T", bound=_Sized)


def take_batch(outbox: list[T], too_large: Callable[[T, int], None]) -> list[T]:
    """The next message's items, taken off the front of ``outbox``: up to BATCH_BYTES (one larger
    item alone). An item the channel could not carry is taken off and handed to
    ``too_large(item, bytes)``, which fails that item's stream instead of the whole call."""
    batch: list[T] = []
    size = 0
    while outbox and len(batch) < MAX_ITEMS_PER_MESSAGE:
        n = outbox[0].ByteSize()
        if n > MAX_MESSAGE_BYTES:
            too_large(outbox.pop(0), n)
            continue
        if batch and size + n > BATCH_BYTES:
            break
        batch.append(outbox.pop(0))
        size += n
    return batch
