"""Polling: the bus workers and their scheduler, alarm rules on fresh readings, MQTT
gateway ingestion, and the narrow context the daemon hands its collaborators.
"""
