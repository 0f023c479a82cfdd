"""settle_startup_heap: what start-up built leaves the collector's reach; later garbage does not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from scp_node.ops.heap import settle_startup_heap


class _Node:
    """An object that can sit in a reference cycle and be watched by a weak reference."""

    partner: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process goes on collecting as before


def test_startup_objects_are_frozen_and_later_cycles_still_collected(unfrozen: None) -> None:
    kept = [object() for _ in range(10)]
    settle_startup_heap()
    assert gc.get_freeze_count() >= len(kept)
    assert all(o is not kept for o in gc.get_objects())  # out of every generation collected

    first, second = _Node(), _Node()
    first.partner, second.partner = second, first  # a cycle made after start-up
    watch = weakref.ref(first)
    del first, second
    gc.collect()
    assert watch() is None
