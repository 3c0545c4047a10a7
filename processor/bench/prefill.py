"""Bundles in state without running the processor: what the engine would have
written for N bundles (states in the changelog, initializations in the index's
input topic, the group's input offsets at the end), written fast.

A million records must not take a million encodings: a few hundred bundles are
encoded once, as templates, and each record is a template whose vip_bundle_id
and booking_id are replaced by fresh ones. A UUID is 36 characters whatever its
value, so the Avro body stays valid.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from processor.bench.kafka import bulk_producer, commit_at_end, produce
from processor.bench.workload import Stories
from processor.codec import Codec
from processor.manage import BundleSerde
from processor.topology import Topics

TEMPLATES = 256


@dataclass(frozen=True)
class _Template:
    init: bytes
    state: bytes
    bundle: bytes  # the template's own ids, replaced in each copy
    booking: bytes


def _templates(stories: Stories, codec: Codec, count: int) -> list[_Template]:
    serde = BundleSerde(codec)
    templates = []
    for _ in range(count):
        init, state = stories.state()
        templates.append(
            _Template(
                codec.encode(init),
                serde.dumps(state),
                init.vip_bundle_id.encode(),
                init.booking_id.encode(),
            )
        )
    return templates


def _prefix(rng: random.Random) -> str:
    # "xxxxxxxx-xxxx-4xxx-yxxx-": a version-4 UUID's text up to its last group.
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))[:24]


def write_state(
    bootstrap: str,
    admin: AdminClient,
    codec: Codec,
    stories: Stories,
    topics: Topics,
    bundles: int,
    seed: int,
    progress: Callable[[int], None] = lambda _: None,
) -> None:
    """Writes `bundles` states and initializations, keyed by vip_bundle_id, and
    commits the group's input offsets at their end (every input routed already)."""
    rng = random.Random(seed)
    templates = _templates(stories, codec, min(TEMPLATES, bundles))
    bundle_prefix, booking_prefix = _prefix(rng), _prefix(rng)
    init_topic, changelog = topics.input("VipBundleInitialized_v1"), topics.changelog
    producer = bulk_producer(bootstrap)
    try:
        for i in range(bundles):
            t = templates[i % len(templates)]
            bundle = f"{bundle_prefix}{i:012x}".encode()
            booking = f"{booking_prefix}{i:012x}".encode()
            init = t.init.replace(t.bundle, bundle).replace(t.booking, booking)
            state = t.state.replace(t.bundle, bundle).replace(t.booking, booking)
            produce(producer, init_topic, init, bundle)
            produce(producer, changelog, state, bundle)
            if i % 10_000 == 0:
                producer.poll(0)
                progress(i)
        if producer.flush(120):
            raise RuntimeError(f"{len(producer)} state records not delivered within 120 s")
    finally:
        producer.flush(5)
    progress(bundles)
    commit_at_end(admin, bootstrap, topics.application_id, topics.inputs)
