"""Data: Dolly-15K and Natural Instructions as federated clients, prompts, tokenisation, datamodule."""
