"""Serve stage: profiles (ours and the Hermes format), the memory fit, the llama-server launch and the login service."""
