"""PK sampling: every batch holds P identities with K images each, as triplet and centre losses need.

Plain Python and numpy, so a trainer can index images it keeps on the GPU directly, or hand the sampler to a
torch ``DataLoader`` as its ``batch_sampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgereid.errors import ConfigError, DataError

# What must match for a saved position to mean the same batches again.
_LAYOUT_KEYS = ("seed", "p", "k", "world_size", "drop_last", "num_identities", "num_images")


class PKSampler:
    """Batches of ``p`` distinct identities x ``k`` indices into ``pids``, identity by identity.

    An epoch visits every identity once, in an order drawn from (``seed``, epoch). An identity with at least
    ``k`` images contributes ``k`` different ones; one with fewer contributes all of its images plus repeats drawn
    with replacement, so it is still trained on rather than dropped.

    With several processes, each step of the epoch takes ``p * world_size`` identities and rank ``r`` gets the
    ``r``-th group of ``p``: ranks see disjoint identities at every step, each batch is a full ``p`` x ``k``, and
    all ranks yield the same number of batches. The identities left over at the end of an epoch are dropped with
    ``drop_last``; otherwise the last step is topped up with identities from the start of the epoch's order.

    Iterating yields the remaining batches of the current epoch and then moves to the next epoch.
    :meth:`set_epoch` chooses the epoch; :meth:`state_dict` records the position within it, so a resumed run
    yields exactly the batches the interrupted one had not yet yielded.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if len(pids) == 0:
            raise DataError("PK sampling needs training images, but the list of identities is empty")
        if p < 2:
            raise ConfigError(f"p (identities per batch) must be at least 2 so that a batch has negatives, got {p}")
        if k < 1:
            raise ConfigError(f"k (images per identity) must be at least 1, got {k}")
        if seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed}")
        if world_size < 1:
            raise ConfigError(f"world_size must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, {world_size - 1}] for world_size {world_size}, got {rank}")
        # Grouping in sorted identity order makes the epoch's order independent of the order of ``pids``.
        identities, identity_of_image = np.unique(np.asarray(pids), return_inverse=True)
        if len(identities) < p * world_size:
            raise ConfigError(
                f"p={p} identities per batch on each of world_size={world_size} processes needs at least "
                f"{p * world_size} identities, but the training split has {len(identities)}; lower p"
            )
        images_by_identity = np.argsort(identity_of_image, kind="stable")
        boundaries = np.cumsum(np.bincount(identity_of_image))[:-1]
        self._images_of_identity: list[np.ndarray] = np.split(images_by_identity, boundaries)
        self._p = p
        self._k = k
        self._seed = seed
        self._rank = rank
        self._world_size = world_size
        self._drop_last = drop_last
        self._num_images = len(pids)
        self._epoch = 0
        self._position = 0
        self._plan: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        """Batches per epoch, on every rank."""
        identities_per_step = self._p * self._world_size
        if self._drop_last:
            return len(self._images_of_identity) // identities_per_step
        return math.ceil(len(self._images_of_identity) / identities_per_step)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch; setting the current epoch again keeps a resumed position."""
        if epoch < 0:
            raise ConfigError(f"epoch must be a non-negative integer, got {epoch}")
        if epoch != self._epoch:
            self._epoch = epoch
            self._position = 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self._epoch)
        while self._position < len(batches):
            batch = batches[self._position]
            # Counted before yielding, so a state saved after using this batch resumes after it.
            self._position += 1
            yield batch.tolist()
        self._epoch += 1
        self._position = 0

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the number of its batches already yielded (the same on every rank)."""
        return {"epoch": self._epoch, "position": self._position, **self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_layout = {key: state.get(key) for key in _LAYOUT_KEYS}
        if saved_layout != self._layout():
            raise ConfigError(
                f"cannot resume PK sampling: it was saved with {saved_layout} but now runs with {self._layout()}; "
                "resuming needs the same seed, p, k, world_size, drop_last and training images"
            )
        if not 0 <= state["position"] <= len(self):
            raise ConfigError(f"saved PK-sampler position {state['position']} is outside [0, {len(self)}]")
        self._epoch = state["epoch"]
        self._position = state["position"]

    def _layout(self) -> dict[str, Any]:
        return {
            "seed": self._seed,
            "p": self._p,
            "k": self._k,
            "world_size": self._world_size,
            "drop_last": self._drop_last,
            "num_identities": len(self._images_of_identity),
            "num_images": self._num_images,
        }

    def _rank_batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of ``epoch``, one row of p*k indices each (kept while the epoch lasts)."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._global_plan(epoch)[:, self._rank])
        return self._plan[1]

    def _global_plan(self, epoch: int) -> np.ndarray:
        """Every rank's batches of ``epoch``, shaped (batches, world_size, p*k); the same on every rank."""
        rng = np.random.default_rng([self._seed, epoch])
        order = rng.permutation(len(self._images_of_identity))
        identities_per_step = self._p * self._world_size
        needed = len(self) * identities_per_step
        # A permutation's prefix never repeats an identity of its tail, so topping up keeps the last step distinct.
        order = np.concatenate([order, order[: needed - len(order)]]) if needed > len(order) else order[:needed]
        picks = np.stack([self._pick_images(identity, rng) for identity in order])
        return picks.reshape(len(self), self._world_size, self._p * self._k)

    def _pick_images(self, identity: int, rng: np.random.Generator) -> np.ndarray:
        images = self._images_of_identity[identity]
        if len(images) >= self._k:
            return rng.choice(images, size=self._k, replace=False)
        repeats = rng.choice(images, size=self._k - len(images), replace=True)
        return rng.permutation(np.concatenate([images, repeats]))
