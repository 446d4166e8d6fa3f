"""Scrape stage: sources (booru APIs, URL lists, folders, the procedural gallery) -> data/raw, through one guarded HTTP client."""
