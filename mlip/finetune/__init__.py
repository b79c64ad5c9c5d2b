"""Fine-tuning a model file: element subsetting, heads, E0s, freezing and replay data."""
