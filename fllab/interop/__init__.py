"""Bridges between fllab and other federated-learning stacks (today: Flower, :mod:`.flower`)."""
