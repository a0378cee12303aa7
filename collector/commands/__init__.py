"""Commands: verified relay control on the device model, the governed relay service (rate
limit, expiry, audit trail), the remote command channel, signing, the secrets file and
the prepaid engine.
"""
