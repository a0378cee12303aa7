"""Forwarding: the outbox forwarder to the time-series store, line protocol written in one
module, and the conversion worker process.
"""
