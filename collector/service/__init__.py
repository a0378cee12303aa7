"""The service: the daemon that composes everything, its control plane (local socket, MQTT
link), systemd notify and Prometheus metrics.
"""
