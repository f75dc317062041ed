"""The platform-neutral conversation handler: greeting, FAQ, claims, handoff, desk.

Nothing here knows a platform or calls a network; storage is reached only
through the `state` protocol.
"""
