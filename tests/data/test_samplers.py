"""``ud.data``'s samplers and the loader's ``sampler=``/``batch_sampler=``, against ``torch.utils.data``'s: the same
exclusions, lengths and kinds of order, each epoch's order a function of (seed, epoch) (resumable mid-epoch)."""

import numpy as np
import pytest

import unidl as ud
from unidl.data import (BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler,
                        TensorDataset, WeightedRandomSampler)

torch = pytest.importorskip("torch")


def labels(loader):
    """The sample indices of one epoch's batches (the dataset's only field is its index), as lists of ints."""
    return [ud.to_numpy(batch).astype(int).tolist() for (batch,) in loader]


def test_sampler_and_batch_sampler_are_refused_with_what_torch_refuses_them_with():
    """``sampler`` with ``shuffle``, and ``batch_sampler`` with ``batch_size`` (but 1, the default), ``shuffle``,
    ``sampler`` or ``drop_last`` are torch's ``ValueError``; the rest is taken by both (``sampler=`` and
    ``batch_sampler=`` were a ``TypeError`` whatever was given)."""
    mine, theirs = TensorDataset(np.arange(10)), torch.utils.data.TensorDataset(torch.arange(10))
    cases = [({"sampler": SequentialSampler(mine), "shuffle": shuffle, "batch_size": 3, "drop_last": True},
              {"sampler": range(10), "shuffle": shuffle, "batch_size": 3, "drop_last": True}) for shuffle in (1, 0)]
    for name, value, torch_value in (("batch_size", 2, 2), ("batch_size", 1, 1), ("shuffle", True, True),
                                     ("shuffle", False, False), ("drop_last", True, True), ("drop_last", False, False),
                                     ("sampler", SequentialSampler(mine), range(10))):
        cases.append(({name: value, "batch_sampler": BatchSampler(SequentialSampler(mine), 3)},
                      {name: torch_value, "batch_sampler": torch.utils.data.BatchSampler(range(10), 3, False)}))
    for given, torch_given in cases:
        try:
            torch_length = len(torch.utils.data.DataLoader(theirs, **torch_given))
        except ValueError as error:
            assert "mutually exclusive" in str(error)
            with pytest.raises(ValueError, match="mutually exclusive"):
                DataLoader(mine, **given)
        else:
            assert len(DataLoader(mine, **given)) == torch_length, given
    assert len(DataLoader(mine)) == len(torch.utils.data.DataLoader(theirs)) == 10  # (batch_size 1 by default)


def test_each_sampler_visits_what_torchs_does_in_an_order_of_its_seed_and_epoch():
    dataset = TensorDataset(np.arange(10))
    torch_dataset = torch.utils.data.TensorDataset(torch.arange(10))
    in_order = DataLoader(dataset, batch_size=4, sampler=SequentialSampler(dataset))
    assert labels(in_order) == [batch.tolist() for (batch,) in torch.utils.data.DataLoader(
        torch_dataset, batch_size=4, sampler=torch.utils.data.SequentialSampler(torch_dataset))]
    # without replacement, beyond the dataset's length: whole permutations, then part of one, as torch's
    loader = DataLoader(dataset, batch_size=5, sampler=RandomSampler(dataset, num_samples=25, seed=3))
    assert len(loader) == len(torch.utils.data.DataLoader(
        torch_dataset, batch_size=5, sampler=torch.utils.data.RandomSampler(torch_dataset, num_samples=25)))
    first, second = (sum(labels(loader), []) for _ in range(2))
    assert sorted(first[:10]) == sorted(first[10:20]) == list(range(10)) and len(set(first[20:])) == 5
    assert first != second and first == sum(labels(DataLoader(
        dataset, batch_size=5, sampler=RandomSampler(dataset, num_samples=25, seed=3))), [])
    with_replacement = RandomSampler(dataset, replacement=True, seed=0).order(0)  # (10 of 10: a repeat, seeded)
    assert len(with_replacement) == 10 and len(set(with_replacement.tolist())) < 10
    subset = DataLoader(dataset, batch_size=3, sampler=SubsetRandomSampler([1, 3, 5, 7, 8], seed=0))
    orders = [sum(labels(subset), []) for _ in range(3)]
    assert all(sorted(order) == [1, 3, 5, 7, 8] for order in orders) and len({tuple(o) for o in orders}) > 1
    weights = [0, 1, 1, 0, 0, 0, 0, 0, 0, 5]
    drawn = sum(labels(DataLoader(dataset, batch_size=4, sampler=WeightedRandomSampler(weights, 30, seed=0))), [])
    assert len(drawn) == 30 and set(drawn) == {1, 2, 9} and drawn.count(9) > drawn.count(1) + drawn.count(2)
    unique = WeightedRandomSampler(weights, 3, replacement=False, seed=0).order(0)
    assert sorted(unique.tolist()) == [1, 2, 9]
    for make, message in ((lambda: WeightedRandomSampler(weights, 4, replacement=False), "exceeds the 3 indices"),
                          (lambda: WeightedRandomSampler([1, -1], 2), "non-negative"),
                          (lambda: RandomSampler(dataset, num_samples=0), "positive integer"),
                          (lambda: WeightedRandomSampler(weights, 2, replacement=1), "must be True or False")):
        with pytest.raises(ValueError, match=message):  # (torch: the ValueError of its num_samples and weights)
            make()


def test_a_loader_with_a_sampler_resumes_mid_epoch_and_keeps_the_samplers_length():
    """The position and seed of a loader over a ``WeightedRandomSampler`` resume the rest of its epoch, as the
    loader's own order does; the sampler's length is its own (the dataset's length replaced it at each epoch)."""
    dataset = TensorDataset(np.arange(10))

    def loader():
        return DataLoader(dataset, batch_size=3, sampler=WeightedRandomSampler(np.arange(10) + 1.0, 13))

    ud.manual_seed(0)
    straight = loader()
    whole = labels(straight) + labels(straight)
    ud.manual_seed(0)
    stopped = loader()
    epoch = iter(stopped)
    next(epoch), next(epoch)
    state = stopped.state_dict()
    assert state["length"] == 13 and len(stopped) == 5
    resumed = loader()  # (another seed: the state's wins)
    resumed.load_state_dict(state)
    assert labels(resumed) + labels(resumed) == whole[2:]


def test_a_loader_state_loads_only_into_a_loader_of_the_same_sampler():
    """The state names its sampler's kind and options: a resume into another order is a ``StateDictError`` naming
    both (every random sampler reported shuffle=True alone, and a state of the same length loaded silently), in
    ``load_state_dict`` and ``check_loader_state`` (a checkpoint's, checked before anything is restored)."""
    from unidl.checkpoint import check_loader_state
    from unidl.errors import CheckpointStateError, StateDictError

    dataset = TensorDataset(np.arange(10))
    taken = DataLoader(dataset, 3, sampler=RandomSampler(dataset, replacement=True, seed=1))
    next(iter(taken))
    state = taken.state_dict()
    for other in (WeightedRandomSampler(np.ones(10), 10, seed=0), RandomSampler(dataset, seed=1),
                  SubsetRandomSampler(np.arange(10), seed=1), Sampler(10, shuffle=True, seed=1)):
        loader = DataLoader(dataset, 3, sampler=other)
        pattern = rf"taken with a RandomSampler\(replacement=True, data_length=10\) but this loader has a " \
                  rf"{type(other).__name__}\("
        with pytest.raises(StateDictError, match=pattern):
            loader.load_state_dict(state)
        with pytest.raises(CheckpointStateError, match=pattern):
            check_loader_state(loader, state)
    weighted = DataLoader(dataset, 3, sampler=WeightedRandomSampler(np.arange(10.0) + 1, 10))
    with pytest.raises(StateDictError, match=r"WeightedRandomSampler\(replacement=True, weights='sha256:"):
        weighted.load_state_dict(DataLoader(dataset, 3, sampler=WeightedRandomSampler(np.ones(10), 10)).state_dict())
    same = DataLoader(dataset, 3, sampler=RandomSampler(dataset, replacement=True, seed=5))
    same.load_state_dict(state)
    assert labels(same) == labels(DataLoader(dataset, 3, sampler=RandomSampler(dataset, replacement=True, seed=1)))[1:]
    own = DataLoader(dataset, 3, shuffle=True, seed=1).state_dict()  # (the loader's own order: no 'sampler', as before)
    assert "sampler" not in own
    DataLoader(dataset, 3, shuffle=True).load_state_dict(own)


def test_an_empty_sampler_is_refused_by_its_name():
    # (it was "drop_last=True with batch_size=2 larger than the 0 samples", with drop_last False)
    with pytest.raises(ValueError, match="the SubsetRandomSampler visits no sample"):
        DataLoader(TensorDataset(np.arange(4)), 2, sampler=SubsetRandomSampler([]))


def test_a_loader_leaves_the_sampler_it_was_given_as_it_was():
    """A loader's ``seed`` (given, loaded) is the loader's own, as torch's loader never changes its sampler: another
    loader sharing it keeps its seed and batches (the second loader's seed replaced the first's)."""
    dataset = TensorDataset(np.arange(10))
    shared = SequentialSampler(dataset)
    first = DataLoader(dataset, 3, sampler=shared, seed=1)
    second = DataLoader(dataset, 3, sampler=shared, seed=2)
    second.load_state_dict(dict(second.state_dict(), seed=3))
    batches = BatchSampler(RandomSampler(dataset, seed=4), 3)
    batched = DataLoader(dataset, batch_sampler=batches)
    batched.load_state_dict(dict(batched.state_dict(), seed=5))
    assert (shared.seed, first.seed, second.seed, batches.sampler.seed) == (None, 1, 3, 4)


def test_a_sampler_changed_between_epochs_orders_the_next_epoch_as_torchs_loader():
    """The loader holds the sampler given as ``loader.sampler`` (``batch_sampler`` alike), as torch's: new weights
    bound to it after construction draw the next epoch, and the first sample read anew (the loader drew from a
    copy, which kept the old weights, and had no ``sampler`` attribute)."""
    dataset = TensorDataset(np.arange(10))
    sampler = WeightedRandomSampler(np.ones(10), 10, seed=0)
    loader = DataLoader(dataset, 5, sampler=sampler)
    batches = BatchSampler(SequentialSampler(dataset), 5)
    assert loader.sampler is sampler and DataLoader(dataset, batch_sampler=batches).batch_sampler is batches
    loader.first_sample()
    oracle = torch.utils.data.WeightedRandomSampler(torch.ones(10), 10)
    torch_loader = torch.utils.data.DataLoader(torch.arange(10), 5, sampler=oracle)
    sampler.weights, oracle.weights = np.eye(10)[3], torch.eye(10, dtype=torch.float64)[3]
    assert labels(loader) == [batch.tolist() for batch in torch_loader] == [[3] * 5] * 2
    assert loader.first_sample()[0].tolist() == [3]


def test_loaders_of_the_same_order_take_each_others_states():
    """A plain loader's state and that of a ``SequentialSampler`` (unshuffled), or of a ``RandomSampler`` over the
    whole dataset without replacement (shuffled, the same permutation of (seed, epoch)), load into each other and go
    on in the same order (they were refused as other samplers)."""
    from unidl.errors import StateDictError

    dataset = TensorDataset(np.arange(10))
    for plain, sampled in ((DataLoader(dataset, 3), DataLoader(dataset, 3, sampler=SequentialSampler(dataset))),
                           (DataLoader(dataset, 3, shuffle=True, seed=2),
                            DataLoader(dataset, 3, sampler=RandomSampler(dataset, seed=2)))):
        assert labels(plain) == labels(sampled)
        sampled.load_state_dict(plain.state_dict())
        plain.load_state_dict(sampled.state_dict())
        assert labels(plain) == labels(sampled)
    longer = DataLoader(dataset, 3, sampler=RandomSampler(dataset, num_samples=10, replacement=True, seed=2))
    with pytest.raises(StateDictError, match="taken with a Sampler"):
        longer.load_state_dict(plain.state_dict())


def test_a_state_whose_sampler_is_no_samplers_settings_is_a_state_dict_error():
    # (an AttributeError: 'str' object has no attribute 'items')
    from unidl.errors import StateDictError

    loader = DataLoader(TensorDataset(np.arange(10)), 3)
    with pytest.raises(StateDictError, match="the state's 'sampler' is 'RandomSampler', not a sampler's settings"):
        loader.load_state_dict(dict(loader.state_dict(), sampler="RandomSampler"))


def test_torchs_samplers_and_generator_are_type_errors_saying_what_to_use():
    dataset = TensorDataset(np.arange(10))
    for options, expected in (({"sampler": torch.utils.data.RandomSampler(range(10))}, "sampler=RandomSampler"),
                              ({"sampler": [0, 1]}, "sampler=list.*ud.data.Subset"),
                              ({"batch_sampler": [[0, 1]]}, "batch_sampler=list.*ud.data.BatchSampler"),
                              ({"generator": torch.Generator()}, "generator=Generator.*pass seed=")):
        with pytest.raises(TypeError, match=rf"DataLoader {expected}"):
            DataLoader(dataset, **options)
    with pytest.raises(ValueError, match="seed=1 with a RandomSampler, which draws its order from a seed of its own"):
        DataLoader(dataset, sampler=RandomSampler(dataset, seed=0), seed=1)
    assert len(DataLoader(dataset, batch_size=4, sampler=None, batch_sampler=None, generator=None)) == 3


class EveryOther(Sampler):
    """A sampler of the user's own: the even indices, then the odd ones."""

    def order(self, epoch):
        return np.concatenate([np.arange(0, self.length, 2), np.arange(1, self.length, 2)])


def test_a_sampler_of_the_users_own_is_iterated_but_refused_sharded_in_a_job(monkeypatch):
    """Its order is taken as it is; in a data-parallel job nothing says that every rank draws the same one, so
    sharding it is a ``ValueError`` (``shard=False`` is taken). (The group's place only, no engine.)"""
    from unidl.distributed import process_group

    dataset = TensorDataset(np.arange(6))
    assert labels(DataLoader(dataset, batch_size=4, sampler=EveryOther(6))) == [[0, 2, 4, 1], [3, 5]]
    monkeypatch.setattr(process_group, "_group", process_group.ProcessGroup(rank=1, world_size=2, local_rank=1,
                                                                            backend=None, engine=None))
    with pytest.raises(ValueError, match=r"a sampler of your own \(EveryOther\) in a data-parallel job"):
        iter(DataLoader(dataset, batch_size=4, sampler=EveryOther(6)))
    assert labels(DataLoader(dataset, batch_size=4, sampler=EveryOther(6), shard=False)) == [[0, 2, 4, 1], [3, 5]]
