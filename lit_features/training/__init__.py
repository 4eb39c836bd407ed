"""Training side: readers and datasets over feature stores, and modules trained on stored features."""
