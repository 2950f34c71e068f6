"""A Flower app defended with fllab (see README.md)."""
