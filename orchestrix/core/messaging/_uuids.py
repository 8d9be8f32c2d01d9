"""Where ``new_uuid4`` and ``uuid_from_bytes`` were; they live in :mod:`orchestrix._speedups`.

aggregate.py still imports ``new_uuid4`` from here.
"""

from orchestrix._speedups import new_uuid4, uuid_from_bytes

__all__ = ["new_uuid4", "uuid_from_bytes"]
