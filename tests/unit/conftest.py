"""Fixtures shared by the unit tests of the Ollama proxy (a stand-in llama-server and the proxy
in front of it); a test module that defines its own of the same name uses its own."""

from tests.unit.ollamafakes import proxy, upstream  # noqa: F401
