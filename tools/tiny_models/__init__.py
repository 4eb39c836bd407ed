"""Makers of tiny random stand-in checkpoints, laid out exactly like the real ones."""
