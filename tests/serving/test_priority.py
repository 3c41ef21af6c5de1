"""priority: the model's threads run below the server's, so the event loop refuses and answers at once."""

import os
import sys
import threading
import time

import pytest

from finetune_bert.serving.priority import BACKGROUND_NICE, lowered

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")


def _nice(tid: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id())


def test_lowered_runs_below_the_caller_and_the_threads_it_makes_inherit_it():
    here = _nice()

    def work():
        seen = {}
        child = threading.Thread(target=lambda: seen.update(child=_nice()))
        child.start()
        child.join()
        return _nice(), seen["child"]

    inside, child = lowered(work)
    assert inside == child == min(19, here + BACKGROUND_NICE)
    assert _nice() == here  # the caller's own priority is untouched


def test_lowered_raises_the_error_in_the_caller():
    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        lowered(fail)


def test_the_batcher_scores_below_the_priority_of_the_threads_that_submit():
    from finetune_bert.serving.batcher import Batcher

    batcher = Batcher(object())
    try:
        deadline = time.time() + 5
        while _nice(batcher._worker.native_id) == _nice() and time.time() < deadline:
            time.sleep(0.01)  # the worker lowers itself as it starts
        assert _nice(batcher._worker.native_id) == min(19, _nice() + BACKGROUND_NICE)
    finally:
        batcher.close(1)
