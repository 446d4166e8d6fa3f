"""moepipe: an MLOps pipeline that builds generators of cute chibi anime avatars."""

__version__ = "0.1.0"
