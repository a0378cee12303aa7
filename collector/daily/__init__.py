"""Daily analytics: the daily jobs (read-success rates, line loss, clock sync, backfill,
read audits) and the reports built on the store.
"""
