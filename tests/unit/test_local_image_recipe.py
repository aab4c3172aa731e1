"""The node image's tag follows its recipe."""

from __future__ import annotations

import os
from pathlib import Path

from dynia.providers.local.image import node_image_tag, recipe_hash

REPO = Path(__file__).resolve().parents[2]


def test_recipe_hash_follows_the_recipe() -> None:
    assert node_image_tag() == f"dynia-node:{recipe_hash()[:12]}"
    assert recipe_hash() == recipe_hash()
    assert os.access(REPO / "dynia/providers/local/image_recipe/customize.sh", os.R_OK)
