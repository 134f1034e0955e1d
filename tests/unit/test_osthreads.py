"""finsent.osthreads: a thread holding the GIL hands it over promptly for a run, and the process gets its own
interval back afterwards."""

import sys

import pytest

from finsent.osthreads import PROMPT_SWITCH_S, prompt_gil_handoff


@pytest.fixture
def default_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_the_interval_is_shortened_for_the_run_and_restored_even_on_error(default_interval):
    with pytest.raises(RuntimeError), prompt_gil_handoff():
        assert sys.getswitchinterval() == pytest.approx(PROMPT_SWITCH_S, rel=0.05)
        raise RuntimeError("the job failed part-way")
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)


def test_a_shorter_interval_already_set_is_kept(default_interval):
    sys.setswitchinterval(0.0001)
    with prompt_gil_handoff():
        assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)  # never lengthened
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
