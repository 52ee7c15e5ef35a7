"""trl adapters (filled by the trl issues)."""
