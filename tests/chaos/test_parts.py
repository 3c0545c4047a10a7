"""The chaos run's parts without a broker: partitioner, fuzzer, recovery, DLQ verdict."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import pytest

from processor.chaos.fuzz import (
    KINDS,
    NEAR_MAX,
    NEAR_MAX_HEADROOM,
    NEAR_MAX_SPREAD,
    SKIPPED,
    Fuzzed,
    Generator,
)
from processor.chaos.partitions import murmur2, partition_of
from processor.chaos.recovery import Kill, Outputs, Percentiles, percentiles, recover
from processor.chaos.verdict import DLQ_HEADERS, check_dead_letters
from processor.codec import Codec, CodecError
from processor.domain.messages import EVENT_TYPES, bundle_id_of
from processor.runtime.dlq import dead_letter
from processor.runtime.handler import BadInput, InputRecord
from processor.simulation.services import Knobs, Services
from processor.topology import Topics

MAX = 1_048_588
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Kafka's UtilsTest.testMurmur2
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_partition_of_takes_the_positive_hash_modulo_the_count() -> None:
    assert partition_of("21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert partition_of(b"21", 7) == partition_of("21", 7)


def test_every_fuzzed_record_meets_its_fate_in_the_route_stage_codec() -> None:
    topics = Topics("app", {t: f"x.{t}" for t in Topics().inputs})
    records = list(Generator(topics, MAX, seed=3).stream(1200, near_max=6))
    codec = Codec()
    types = {topics.input(cls.schema_name): cls for cls in EVENT_TYPES}
    for record in records:
        try:
            event = codec.decode(record.value or b"", types[record.topic])
        except CodecError:
            assert record.dead_letter, record.kind
        else:
            assert not record.dead_letter, record.kind
            assert record.kind == SKIPPED
            assert bundle_id_of(event) == record.reference  # None for booking events
    kinds = Counter(r.kind for r in records)
    assert set(kinds) == set(KINDS)  # every kind, on the topics it fits
    assert all(r.event_name in KINDS[r.kind] for r in records)
    assert Counter(r.event_name for r in records) == dict.fromkeys(
        (cls.schema_name for cls in EVENT_TYPES), 200
    )
    assert kinds[NEAR_MAX] == 6
    low = MAX - NEAR_MAX_HEADROOM - NEAR_MAX_SPREAD
    assert all(low <= r.size <= MAX - NEAR_MAX_HEADROOM for r in records if r.kind == NEAR_MAX)
    assert any(r.key is None for r in records) and any(r.key for r in records)
    assert all(r.headers[0] == ("chaos.fuzz", f"{r.seq}:{r.kind}".encode()) for r in records)


def test_the_fuzzer_is_deterministic_for_a_seed() -> None:
    def draw(seed: int) -> list[tuple[str, bytes | None, bytes | None]]:
        records = Generator(Topics(), MAX, seed).stream(100, near_max=0)
        return [(r.kind, r.key, r.value) for r in records]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_a_kind_refuses_a_topic_it_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Generator(Topics(), MAX).make("passengers-mismatch", "BookingMade_v1")


# --- recovery ------------------------------------------------------------------------------


def _bundle_on(task: int, partitions: int) -> str:
    return next(f"b{n}" for n in range(1000) if partition_of(f"b{n}", partitions) == task)


def test_recovery_counts_only_outputs_committed_after_the_kill() -> None:
    outputs = Outputs(partitions=4)
    one, two = _bundle_on(1, 4), _bundle_on(2, 4)
    kill = Kill("p1", at=100.0, partitions=(1, 2), output_ends={("out", 0): 10, ("out", 1): 5})
    kill.ends_taken_at, kill.restarted_at = 100.3, 101.0
    outputs.saw(one, "out", 0, 9, at=100.1)  # committed before the kill, seen after
    outputs.saw(one, "out", 0, 10, at=103.0)
    outputs.saw(two, "out", 1, 7, at=104.5)
    outputs.saw(two, "out", 2, 50, at=102.0)  # no end taken for out[2]: tells nothing

    recover([kill], outputs)

    assert kill.recovery_s == pytest.approx(4.5)  # the slower of its two partitions


def test_recovery_is_unknown_without_outputs_or_with_ends_taken_too_late() -> None:
    outputs = Outputs(partitions=2)
    outputs.saw(_bundle_on(0, 2), "out", 0, 3, at=20.0)
    quiet = Kill("p1", at=10.0, partitions=(1,), output_ends={("out", 0): 0})
    late = Kill("p2", at=10.0, partitions=(0,), output_ends={("out", 0): 0})
    quiet.ends_taken_at = quiet.restarted_at = 10.5
    late.restarted_at, late.ends_taken_at = 11.0, 12.5  # the restarted one may have published

    recover([quiet, late], outputs)

    assert quiet.recovery_s is None and late.recovery_s is None
    assert percentiles([quiet, late]).count == 0


def test_percentiles_are_the_median_and_the_maximum() -> None:
    kills = [Kill("p", 0.0, ()) for _ in range(4)]
    for kill, seconds in zip(kills, (1.0, 4.0, 2.0, None), strict=True):
        kill.recovery_s = seconds
    assert percentiles(kills) == Percentiles(3, 2.0, 4.0)


# --- the DLQ verdict -----------------------------------------------------------------------


def _fuzzed(seq: int, kind: str = "random-bytes", offset: int | None = None) -> Fuzzed:
    record = Fuzzed(seq, kind, "BookingMade_v1", "in", b"k", b"v%d" % seq, [("chaos.fuzz", b"x")])
    record.partition, record.offset = 0, seq if offset is None else offset
    return record


def _letter(fuzzed: Fuzzed, dlq_offset: int) -> InputRecord:
    source = InputRecord(
        fuzzed.topic, fuzzed.partition, fuzzed.offset, 0, fuzzed.key, fuzzed.value, fuzzed.headers
    )
    out = dead_letter("dlq", source, BadInput("not-single-object"))
    return InputRecord("dlq", 0, dlq_offset, 0, out.key, out.value, out.headers or [])


def test_the_dlq_verdict_finds_each_bad_record_once_with_its_six_headers() -> None:
    a, b, skipped = _fuzzed(1), _fuzzed(2), _fuzzed(3, SKIPPED)
    letters = [_letter(a, 0), _letter(b, 1)]

    found = check_dead_letters([a, b, skipped], letters)

    assert (found.found, found.expected, found.problems()) == (2, 2, [])
    assert found.exceptions == {"BadInput": 2}


def test_the_dlq_verdict_names_what_is_missing_twice_changed_or_unexpected() -> None:
    missing, twice, changed, skipped = _fuzzed(1), _fuzzed(2), _fuzzed(3), _fuzzed(4, SKIPPED)
    stranger = _fuzzed(99)
    altered = replace(_letter(changed, 3), value_=b"other")
    headless = InputRecord("dlq", 0, 6, 0, None, None, [("__streams.errors.topic", b"in")])
    letters = [_letter(twice, 0), _letter(twice, 1), altered, _letter(skipped, 4)]
    letters += [_letter(stranger, 5), headless]

    found = check_dead_letters([missing, twice, changed, skipped], letters)

    problems = found.problems()
    assert found.found == 0
    assert "fuzzed #1 (random-bytes, in[0]@1) not in the DLQ" in problems
    assert "fuzzed #2 (random-bytes) in the DLQ 2 times" in problems
    assert "fuzzed #3 (random-bytes): key or value changed" in problems
    assert "fuzzed #4 (unknown-bundle) dead-lettered: in[0]@4" in problems
    assert any(p.startswith("dead letter of in[0]@99 (BadInput") for p in problems)
    missing_headers = [h for h in DLQ_HEADERS if h != "__streams.errors.topic"]
    assert f"dead letter at DLQ offset 6 lacks {missing_headers}" in problems
    assert len(problems) == 6


@pytest.mark.parametrize("seed", [0, 11, 4242])
def test_fuzzed_ids_are_none_of_the_worlds_for_the_same_seed(seed: int) -> None:
    # Found by the chaos run: fuzzer and services drew from equal random streams, so a
    # fuzzed "event of no bundle" named a real bundle, whose outputs were then taken for
    # outputs of that fuzzed reference.
    services = Services(Knobs(), seed)
    world: set[str] = set()
    for n in range(200):
        for item in services.new_bundle(float(n)):
            world |= set(re.findall(UUID, repr(item.event)))
    world |= services.ordinary_references
    fuzzed: set[str] = set()
    for record in Generator(Topics(), MAX, seed).stream(300, near_max=0):
        fuzzed |= {m.decode() for m in re.findall(UUID.encode(), record.value or b"")}
        fuzzed |= {record.reference} if record.reference else set()
    assert len(world) > 600 and len(fuzzed) > 300
    assert world.isdisjoint(fuzzed)
