"""Plain commands (no model loading): verify, export-npz, filter, inspect, list."""
