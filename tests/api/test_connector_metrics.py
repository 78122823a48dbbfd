"""Each connector's leaked client threads and store connections reach /metrics (issue #10, item 4)."""

from __future__ import annotations

from infra.metrics import ConnectorFigures, MetricsSnapshot, publish_connector_figures, read_connector_figures


async def test_connector_figures_round_trip_through_redis_into_prometheus_text(redis_client, redis_prefix):
    await publish_connector_figures(redis_client, redis_prefix, ConnectorFigures("c1", 3, 41, 57))
    await publish_connector_figures(redis_client, redis_prefix, ConnectorFigures("c1", 4, 42, 58))  # replaces
    (figures,) = await read_connector_figures(redis_client, redis_prefix)
    assert (figures.connector_id, figures.leaked_threads, figures.store_connections) == ("c1", 4, 42)
    text = MetricsSnapshot({}, {}, connectors=[figures]).to_prometheus().decode()
    assert 'whatsapp_connector_leaked_client_threads{connector="c1"} 4.0' in text
    assert 'whatsapp_connector_store_connections{connector="c1"} 42.0' in text
    body = MetricsSnapshot({}, {}, connectors=[figures]).to_json()
    assert body["connectors"] == [{"connectorId": "c1", "leakedThreads": 4, "storeConnections": 42,
                                   "clientsStarted": 58}]
