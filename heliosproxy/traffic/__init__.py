"""Traffic control on the data path: rate limits and quotas shared by every worker (limits.py)."""
