"""Plain commands (no model loading): verify, filter, inspect, list."""
