"""peft adapters (filled by the peft issues)."""
