"""Seeded byte mutations of a file's content, shared by the loader fuzz tests and benchmarks/bench_fuzz.py."""

from __future__ import annotations

import random
from collections.abc import Callable


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data))
    return data[:position] + bytes([data[position] ^ (1 << rng.randrange(8))]) + data[position + 1:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data) + 1)
    return data[:position] + rng.randbytes(rng.randint(1, 64)) + data[position:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data))
    return data[:position] + data[position + rng.randint(1, 64):]


def overwrite_bytes(data: bytes, rng: random.Random) -> bytes:
    length = rng.randint(2, 64)
    position = rng.randrange(max(len(data) - length, 1))
    return data[:position] + rng.randbytes(length) + data[position + length:]


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 3, 6, 64, 4096, len(data)]))


BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    mutate.__name__: mutate
    for mutate in (flip_bit, truncate, insert_bytes, delete_bytes, overwrite_bytes, random_bytes)
}
