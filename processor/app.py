"""The composition root: both sub-topologies of the process manager in one engine.

Route (input topics -> repartition topics, via the booking index) and manage
(repartition topics -> outputs, with state) share one consumer group and one
transactional producer, so a routed event and its input offset commit together.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from processor.codec import Codec, DecodeMemo
from processor.logs import kafka_logger
from processor.manage import BundleSerde, saga_handler
from processor.routing import INDEX, index_entries, saga_router_factory
from processor.runtime.clients import Clients, KafkaClients
from processor.runtime.engine import Engine, EngineConfig, TableSpec
from processor.topology import Topics


def build_engine(
    *,
    bootstrap_servers: str,
    topics: Topics,
    instance_id: str,
    state_dir: Path,
    client_config: dict[str, str] | None = None,
    codec: Codec | None = None,
    clients: Clients | None = None,
    **engine_options: Any,
) -> Engine:
    """`state_dir` is this instance's (already including the application id)."""
    codec = codec or Codec()
    config = EngineConfig(
        bootstrap_servers=bootstrap_servers,
        application_id=topics.application_id,
        instance_id=instance_id,
        source_topics=topics.repartitions,
        route_topics=topics.inputs,
        changelog_topic=topics.changelog,
        dlq_topic=topics.dlq,
        state_dir=state_dir,
        client_config=dict(client_config or {}),
    )
    config = replace(config, **engine_options)
    # Each event is decoded once per process: the route stage keeps what it decoded,
    # the manage stage takes it. The route stage runs at most about `buffered_records`
    # ahead. (Not the booking index: its catch-ups read millions of initializations
    # that nothing takes, and measured twice as slow with them kept.)
    decoded = DecodeMemo(codec, capacity=2 * config.buffered_records)
    index = TableSpec(topics.input("VipBundleInitialized_v1"), INDEX, index_entries(codec))
    return Engine(
        config,
        saga_handler(codec, topics, decode=decoded.take),
        BundleSerde(codec),
        router=saga_router_factory(decoded, topics),
        tables=(index,),
        clients=clients or KafkaClients(logger=kafka_logger()),
    )
