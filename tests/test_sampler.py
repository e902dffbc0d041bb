from __future__ import annotations

from collections import Counter

import pytest

from edgereid.data.sampler import PKSampler
from edgereid.errors import ConfigError, DataError

# 12 identities; identity i has i + 1 images, so the first three have fewer than K = 4.
PIDS = [100 + identity for identity in range(12) for _ in range(identity + 1)]


def batch_identities(batch: list[int], k: int) -> list[int]:
    """The identity of each run of ``k`` indices, checking that a run is one identity."""
    runs = [batch[start : start + k] for start in range(0, len(batch), k)]
    identities = []
    for run in runs:
        assert len({PIDS[index] for index in run}) == 1, run
        identities.append(PIDS[run[0]])
    return identities


def test_every_batch_is_p_distinct_identities_with_k_images_each() -> None:
    sampler = PKSampler(PIDS, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    for batch in batches:
        assert len(batch) == 12
        assert len(set(batch_identities(batch, 4))) == 3
    # Each identity once per epoch, in a shuffled order.
    epoch_identities = [pid for batch in batches for pid in batch_identities(batch, 4)]
    assert sorted(epoch_identities) == sorted(set(PIDS))
    assert epoch_identities != sorted(epoch_identities)


def test_identities_with_few_images_use_all_of_them_then_repeats() -> None:
    for batch in PKSampler(PIDS, p=4, k=4, seed=1):
        for start in range(0, len(batch), 4):
            run = batch[start : start + 4]
            available = [index for index, pid in enumerate(PIDS) if pid == PIDS[run[0]]]
            if len(available) >= 4:
                assert len(set(run)) == 4
            else:
                assert set(run) == set(available)


def test_same_seed_and_epoch_give_the_same_batches() -> None:
    first, second = PKSampler(PIDS, 3, 4, seed=7), PKSampler(PIDS, 3, 4, seed=7)
    assert list(first) == list(second)
    first.set_epoch(5)
    second.set_epoch(5)
    epoch_five = list(first)
    assert epoch_five == list(second)
    first.set_epoch(6)
    assert list(first) != epoch_five
    assert list(PKSampler(PIDS, 3, 4, seed=8)) != list(PKSampler(PIDS, 3, 4, seed=7))


def test_iterating_moves_to_the_next_epoch() -> None:
    sampler = PKSampler(PIDS, 3, 4, seed=0)
    epoch_zero = list(sampler)
    assert sampler.epoch == 1
    epoch_one = list(sampler)
    reference = PKSampler(PIDS, 3, 4, seed=0)
    reference.set_epoch(1)
    assert epoch_one == list(reference) != epoch_zero


@pytest.mark.parametrize(("drop_last", "expected_batches"), [(True, 2), (False, 3)])
def test_length_with_leftover_identities(drop_last: bool, expected_batches: int) -> None:
    # 12 identities in batches of 5: two full batches and two identities left over.
    sampler = PKSampler(PIDS, p=5, k=2, seed=0, drop_last=drop_last)
    batches = list(sampler)
    assert len(sampler) == len(batches) == expected_batches
    assert all(len(set(batch_identities(batch, 2))) == 5 for batch in batches)
    covered = {pid for batch in batches for pid in batch_identities(batch, 2)}
    assert len(covered) == (10 if drop_last else 12)


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_identities_at_every_step(drop_last: bool) -> None:
    # 12 identities over 5 ranks x 2 per step: one full step and two identities left over.
    world_size = 5
    ranks = [
        PKSampler(PIDS, 2, 4, seed=3, rank=rank, world_size=world_size, drop_last=drop_last)
        for rank in range(world_size)
    ]
    per_rank = [list(sampler) for sampler in ranks]
    assert len({len(sampler) for sampler in ranks}) == 1
    assert [len(batches) for batches in per_rank] == [len(ranks[0])] * world_size
    for step in zip(*per_rank):
        identities = [pid for batch in step for pid in batch_identities(batch, 4)]
        assert len(identities) == len(set(identities)) == 2 * world_size
    assert len(ranks[0]) == (1 if drop_last else 2)
    covered = {pid for batches in per_rank for batch in batches for pid in batch_identities(batch, 4)}
    assert len(covered) == (10 if drop_last else 12)


def test_resume_mid_epoch_yields_exactly_the_remaining_batches() -> None:
    sampler = PKSampler(PIDS, 3, 2, seed=11)
    sampler.set_epoch(4)
    iterator = iter(sampler)
    consumed = [next(iterator), next(iterator)]
    state = sampler.state_dict()
    remaining = list(iterator)
    assert state["epoch"] == 4 and state["position"] == 2

    resumed = PKSampler(PIDS, 3, 2, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the training loop sets the epoch it resumes: the position must survive
    assert list(resumed) == remaining
    reference = PKSampler(PIDS, 3, 2, seed=11)
    reference.set_epoch(4)
    assert list(reference) == consumed + remaining
    # A state saved at the end of an epoch resumes at the start of the next one.
    assert resumed.state_dict()["epoch"] == 5 and resumed.state_dict()["position"] == 0


def test_resume_with_another_layout_is_refused() -> None:
    state = PKSampler(PIDS, 3, 2, seed=11).state_dict()
    with pytest.raises(ConfigError, match="world_size"):
        PKSampler(PIDS, 3, 2, seed=11, world_size=2).load_state_dict(state)


def test_serves_as_a_dataloader_batch_sampler() -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    sampler = PKSampler(PIDS, 3, 4, seed=2)
    expected = list(PKSampler(PIDS, 3, 4, seed=2))
    loader = DataLoader(TensorDataset(torch.arange(len(PIDS))), batch_sampler=sampler)
    assert len(loader) == len(expected)
    assert [batch.tolist() for (batch,) in loader] == expected


def test_counts_of_identities_follow_pids_not_their_order() -> None:
    reordered = list(reversed(PIDS))
    sampler = PKSampler(reordered, 2, 3, seed=0)
    counts = Counter(reordered[index] for batch in sampler for index in batch)
    assert set(counts.values()) == {3}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pids": []}, DataError, "empty"),
        ({"p": 1}, ConfigError, "p .*at least 2"),
        ({"k": 0}, ConfigError, "k .*at least 1"),
        ({"p": 7, "world_size": 2}, ConfigError, "needs at least 14 identities.* has 12"),
        ({"rank": 2, "world_size": 2}, ConfigError, "rank must be in"),
        ({"seed": -1}, ConfigError, "seed"),
    ],
)
def test_invalid_arguments_are_explained(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    arguments: dict[str, object] = {"pids": PIDS, "p": 2, "k": 2, "seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        PKSampler(**arguments)  # type: ignore[arg-type]
