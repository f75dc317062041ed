"""Storage for kefu: one small async protocol, an embedded SQLite implementation.

Nothing here knows about conversations or platforms; records are JSON-able
dicts that `handlers/` serialises. Keys are built in `state.keys` only.
"""

from state.protocol import CaseRow, IngressRow, OutboxItem, OutboxRow, Store, Turn

__all__ = ["CaseRow", "IngressRow", "OutboxItem", "OutboxRow", "Store", "Turn"]
