"""case_loader: cases in order, the next one prepared in a background thread while the current one is used."""

import threading

import pytest
from torch.utils.data import DataLoader

from ctmil.infer.batch import PrefetchLoader, case_loader


class Items:
    """A dataset that records which thread prepared each item and when item i started."""

    def __init__(self, n=4, fail_at=None):
        self.n, self.fail_at = n, fail_at
        self.started = [threading.Event() for _ in range(n)]
        self.threads = {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.started[i].set()
        self.threads[i] = threading.current_thread().name
        if i == self.fail_at:
            raise RuntimeError(f"item {i} is broken")
        return {"i": i}


def test_order_length_and_background_thread():
    data = Items()
    loader = case_loader(data, prefetch=1)
    assert isinstance(loader, PrefetchLoader) and isinstance(loader, DataLoader) and len(loader) == 4
    seen = []
    for item in loader:
        if item["i"] + 1 < data.n:  # the next case is prepared while this one is being used
            assert data.started[item["i"] + 1].wait(timeout=10)
        seen.append(item["i"])
    assert seen == [0, 1, 2, 3]
    assert set(data.threads.values()) == {"ctmil-case-prefetch"}
    assert [x["i"] for x in loader] == [0, 1, 2, 3]  # iterable again


def test_at_most_prefetch_plus_one_items_alive():
    data = Items(n=6)
    iterator = iter(case_loader(data, prefetch=1))
    assert next(iterator)["i"] == 0
    assert data.started[1].wait(timeout=10)  # the next one is prepared ...
    assert not data.started[2].wait(timeout=0.5)  # ... but not the one after, while item 0 is in use
    assert next(iterator)["i"] == 1  # item 0 is done with: item 2 may be prepared now
    assert data.started[2].wait(timeout=10)
    assert [x["i"] for x in iterator] == [2, 3, 4, 5]


def test_no_prefetch_and_workers_use_the_plain_loader():
    data = Items()
    loader = case_loader(data)  # default: one at a time
    assert type(loader) is DataLoader
    assert [x["i"] for x in loader] == [0, 1, 2, 3]
    assert set(data.threads.values()) == {threading.current_thread().name}


def test_error_raised_in_the_consumer_at_its_item():
    seen = []
    with pytest.raises(RuntimeError, match="item 2 is broken"):
        for item in case_loader(Items(fail_at=2), prefetch=1):
            seen.append(item["i"])
    assert seen == [0, 1]


def test_early_stop_ends_the_thread():
    before = {t.name for t in threading.enumerate()}
    for item in case_loader(Items(n=50), prefetch=2):
        if item["i"] == 1:
            break
    assert "ctmil-case-prefetch" not in {t.name for t in threading.enumerate()} - before


@pytest.mark.parametrize("prefetch", [-1, 1.5, True])
def test_bad_prefetch(prefetch):
    with pytest.raises(ValueError, match="prefetch"):
        case_loader(Items(), prefetch=prefetch)
