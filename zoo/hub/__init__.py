"""The Hub side of equizoo: upload model directories, pull them back verified, and a Hub-compatible
server for tests and local team hubs (zoo.hub.server). Publishing with a model card is zoo.publish.

    zoo.publish.publish("runs/aspirin", "ORG/equiformer-md17-aspirin-l2")   # -> Publication(revision=...)
    zoo.hub.pull("equiformer-md17-aspirin-l2")                          # -> verified local directory
    zoo.hub.resolve_model("hf-hub:ORG/NAME@<sha>")                      # what zoo.load uses

Supported huggingface_hub: >=0.30,<3 (tested with 2.4).
"""

from zoo.hub.client import (
    HubError,
    Publication,
    copy_model,
    endpoint,
    model_dir_of,
    parse_hub_id,
    pull,
    resolve_model,
    upload,
)
from zoo.hub.manifest import MANIFEST, IntegrityError, hash_files, read_manifest, sha256_file, verify_files

__all__ = [
    "MANIFEST",
    "HubError",
    "IntegrityError",
    "Publication",
    "copy_model",
    "endpoint",
    "hash_files",
    "model_dir_of",
    "parse_hub_id",
    "upload",
    "pull",
    "read_manifest",
    "resolve_model",
    "sha256_file",
    "verify_files",
]
