"""llmaas: a self-hostable LLM-as-a-Service platform."""

__version__ = "0.1.0"
