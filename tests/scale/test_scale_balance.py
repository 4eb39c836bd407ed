"""Splitting the remaining work over ranks: exactly once, deterministic, balanced, and kept by Lightning."""

from __future__ import annotations

import json
import random
import statistics
from types import SimpleNamespace

import pytest
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler

from lit_features.data.datamodule import ManifestDataModule, RankShardSampler, assign_to_ranks, estimate_cost
from lit_features.data.preprocess import Preprocessor
from lit_features.data.sample import Sample


def skewed_costs(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(5.0, 1.2) for _ in range(n)]


@pytest.mark.parametrize("n,world", [(10, 3), (7, 4), (64, 8), (2, 4), (0, 3), (5, 1)])
def test_strided_matches_lightning_unrepeated_sampler(n: int, world: int) -> None:
    shares = assign_to_ranks([1.0] * n, world, "strided")
    if n >= world:  # Lightning's sampler asserts on ranks with nothing; ours allows them (checked below)
        for rank in range(world):
            stock = UnrepeatedDistributedSampler(list(range(n)), num_replicas=world, rank=rank, shuffle=False)
            assert shares[rank] == list(stock)


@pytest.mark.parametrize("how", ["strided", "greedy"])
@pytest.mark.parametrize("n,world", [(1000, 7), (3, 8), (64, 64), (1, 2)])
def test_every_position_exactly_once(how: str, n: int, world: int) -> None:
    costs = sorted(skewed_costs(n), reverse=True)
    shares = assign_to_ranks(costs, world, how)
    flat = [i for share in shares for i in share]
    assert sorted(flat) == list(range(n))
    assert len(shares) == world
    for share in shares:  # each rank keeps the given order (most expensive first)
        assert share == sorted(share)
    # Recomputed from the same inputs (as every rank does): identical.
    assert assign_to_ranks(list(costs), world, how) == shares


def test_greedy_beats_round_robin_on_skewed_costs() -> None:
    costs = sorted(skewed_costs(400, seed=3), reverse=True)
    world = 8

    def slowest_over_mean(shares: list[list[int]]) -> float:
        loads = [sum(costs[i] for i in s) for s in shares]
        return max(loads) / statistics.fmean(loads)

    greedy = slowest_over_mean(assign_to_ranks(costs, world, "greedy"))
    strided_sorted = slowest_over_mean(assign_to_ranks(costs, world, "strided"))
    manifest = skewed_costs(400, seed=3)  # unsorted: what a plain strided split sees
    loads = [sum(manifest[i] for i in s) for s in assign_to_ranks(manifest, world, "strided")]
    strided_manifest = max(loads) / statistics.fmean(loads)
    assert greedy < strided_sorted < strided_manifest
    # Greedy list scheduling bound: slowest <= mean + largest single cost.
    loads = [sum(costs[i] for i in s) for s in assign_to_ranks(costs, world, "greedy")]
    assert max(loads) <= statistics.fmean(loads) + max(costs) + 1e-9


def test_greedy_gives_empty_ranks_when_fewer_samples_than_ranks() -> None:
    shares = assign_to_ranks([5.0, 1.0], 4, "greedy")
    assert shares == [[0], [1], [], []]


def test_rank_shard_sampler_is_a_distributed_sampler_lightning_keeps() -> None:
    sampler = RankShardSampler(list(range(10)), [7, 2, 5], num_replicas=3, rank=1)
    # Lightning only injects its own sampler when the loader's is not a DistributedSampler.
    assert isinstance(sampler, DistributedSampler)
    assert list(sampler) == [7, 2, 5] and len(sampler) == 3
    empty = RankShardSampler(list(range(2)), [], num_replicas=4, rank=3)
    assert list(empty) == [] and len(empty) == 0


def test_cost_estimate_honours_cut_and_metadata(tmp_path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 1000)
    res = {"height": 10, "width": 20}
    full = Sample("a", str(video), {"num_frames": 100, "resolution": res})
    half = Sample("b", str(video), {"num_frames": 100, "resolution": res, "cut": [0, 50]})
    past_end = Sample("c", str(video), {"num_frames": 100, "resolution": res, "cut": [90, 500]})
    size_only = Sample("d", str(video), {"num_frames": 100, "cut": [0, 25]})
    assert estimate_cost(full) == 100 * 200
    assert estimate_cost(half) == 50 * 200
    assert estimate_cost(past_end) == 10 * 200
    assert estimate_cost(size_only) == 250.0  # a quarter of the file's bytes
    assert estimate_cost(Sample("e", str(tmp_path / "missing.mp4"), {})) == 0.0


class _Module:
    def preprocessor(self) -> Preprocessor:
        return Preprocessor()


def _loader_keys(world: int, rank: int, manifest: str, skip: set[str], order: str) -> list[str]:
    dm = ManifestDataModule(manifest=manifest, order=order, num_workers=0, sandbox=False)
    writer = SimpleNamespace(skip_keys=lambda samples=None: skip, attempt_log_path=lambda: None)
    dm.trainer = SimpleNamespace(
        world_size=world, global_rank=rank, callbacks=[writer], lightning_module=_Module(), accelerator=None
    )
    loader = dm.predict_dataloader()
    if world > 1:
        assert isinstance(loader.sampler, RankShardSampler)
    return [dm.dataset.samples[i].key for i in loader.sampler]


@pytest.mark.parametrize("order", ["manifest", "cost", "balanced"])
def test_datamodule_splits_what_is_left_exactly_once(tmp_path, order: str) -> None:
    rng = random.Random(5)
    entries = [
        {"path": f"clip{i}.mp4", "num_frames": rng.randint(10, 2000), "resolution": {"height": 36, "width": 64}}
        for i in range(23)
    ]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(entries))
    all_keys = set(_loader_keys(1, 0, str(manifest), set(), order))
    assert len(all_keys) == 23
    done = set(sorted(all_keys)[:9])  # a resumed run: 9 done, 14 left, split over 5 ranks
    per_rank = [_loader_keys(5, r, str(manifest), done, order) for r in range(5)]
    flat = [k for keys in per_rank for k in keys]
    assert len(flat) == len(set(flat)) == 14
    assert set(flat) == all_keys - done
    position = {f"clip{i}_mp4": i for i in range(len(entries))}
    if order == "balanced":  # costs pick the rank; each rank goes through its share in manifest order
        for keys in per_rank:
            assert keys == sorted(keys, key=position.__getitem__)
        assert _loader_keys(1, 0, str(manifest), set(), order) == sorted(all_keys, key=position.__getitem__)
        frames = {f"clip{i}_mp4": e["num_frames"] for i, e in enumerate(entries)}
        loads = [sum(frames[k] for k in keys) for keys in per_rank]
        rr = [_loader_keys(5, r, str(manifest), done, "cost") for r in range(5)]  # round-robin, same data
        rr_loads = [sum(frames[k] for k in keys) for keys in rr]
        assert max(loads) <= max(rr_loads)


def test_balanced_unit_split_keeps_manifest_order_within_each_rank() -> None:
    rng = random.Random(11)
    samples = [
        Sample(f"k{i}", f"clip{i}.mp4", {"num_frames": rng.randint(10, 2000), "resolution": {"height": 8, "width": 8}})
        for i in range(30)
    ]
    todo = [i for i in range(30) if i % 7]  # what is left of the unit
    dm = ManifestDataModule(manifest="unused.json", order="balanced")
    shares = dm.split_unit(samples, todo, 4)
    assert sorted(i for share in shares for i in share) == todo
    assert all(share == sorted(share) for share in shares)
    loads = [sum(estimate_cost(samples[i]) for i in share) for share in shares]
    strided = ManifestDataModule(manifest="unused.json", order="manifest").split_unit(samples, todo, 4)
    assert max(loads) < max(sum(estimate_cost(samples[i]) for i in share) for share in strided)
    assert dm.split_unit(samples, todo, 1) == [todo]
