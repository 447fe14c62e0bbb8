"""``ud.tensor`` and ``ud.to_numpy`` copy on every backend: neither side sees later changes of the other."""

import numpy as np

import unidl as ud


def test_tensor_does_not_alias_the_array(backend):
    for array in (np.zeros((2, 3), np.float32), np.arange(6).reshape(2, 3)):
        t = ud.tensor(array)
        array[0, 0] = 7
        assert ud.to_numpy(t)[0, 0] == 0


def test_to_numpy_does_not_alias_the_tensor(backend):
    t = ud.tensor(np.zeros(3, np.float32))
    a = ud.to_numpy(t)
    a[0] = 5
    assert ud.to_numpy(t)[0] == 0


def test_scalars_keep_their_shape(backend):
    assert tuple(ud.tensor(3.0).shape) == () and tuple(ud.tensor(np.float32(2.5)).shape) == ()
    assert float(ud.to_numpy(ud.tensor(3.0))) == 3.0
