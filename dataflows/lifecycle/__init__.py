"""The registry and the life cycle.

The models topic's protocol, the router and its watcher, publishing, policy, training.
"""
