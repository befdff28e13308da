"""kombu's Redis transport, keeping one redis-py client per channel (the broker of distributed mode, named by
``core.jobs.queue.celery_config`` for ``redis://`` URLs).

kombu builds a new redis-py client for every publish, ack and unacked-index write (``Channel._create_client``), and
redis-py's constructor (its response callbacks, ~170 entries) costs more than the command it then sends: a Celery
``send_task`` took 0.71 ms where its one LPUSH takes 0.085 ms. A client is thread-safe and draws its connections from
the channel's pool, so one is kept while that pool is the channel's. Written here because kombu has no setting for it.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:  # the event loop's BRPOP client: kombu manages its connection itself
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:  # a new pool after a reconnect: a new client
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
