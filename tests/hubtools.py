"""The local Hub the artifact tests talk to: our Hub-compatible server on loopback and the real client."""

from __future__ import annotations

TOKEN = "hub-test-token"
USER = "alice"


def point_client_at(monkeypatch, url: str) -> None:
    """HF_ENDPOINT for this test; clients < 1.0 also froze it at import into constants (commit and file URLs)."""
    from huggingface_hub import constants, file_download

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    for module in (constants, file_download):
        if hasattr(module, "HUGGINGFACE_CO_URL_TEMPLATE"):
            monkeypatch.setattr(module, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
