"""``ScopedFlag``: on inside its block only, put back as it was after a nested block or an exception, and off in
another thread meanwhile (what fit's resume rule, the export refusal and the shape probe rely on)."""

import threading

import pytest

from unidl.scoped_flags import ScopedFlag


def test_a_scoped_flag_is_on_in_its_block_only_and_in_this_thread_only():
    flag = ScopedFlag("unidl_test_flag")
    seen_elsewhere = []
    assert not flag
    with flag.raised():
        assert flag
        with flag.raised():
            assert flag
        assert flag  # the inner block put back what it found
        other = threading.Thread(target=lambda: seen_elsewhere.append(bool(flag)))
        other.start()
        other.join()
    assert not flag and seen_elsewhere == [False]
    with pytest.raises(KeyError):
        with flag.raised():
            raise KeyError("inside")
    assert not flag
