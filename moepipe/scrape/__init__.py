"""Scrape stage: sources (booru APIs, URL lists, folders, the procedural gallery) -> data/raw.

Everything network-bound goes through one guarded HTTP client (fetch, robots, netguard, hostlimits).
"""
