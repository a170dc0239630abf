"""Chat clients: a Python API (``ChatClient``, ``chat``) and the ``devops-model chat`` terminal client."""

from .client import ChatClient, chat, render_chatml

__all__ = ["ChatClient", "chat", "render_chatml"]
