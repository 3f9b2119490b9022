"""What a job spec can name: built-in datasets, architectures, strategies, weighting methods."""

from typing import Any

from fastapi import APIRouter

from app.api.deps import TenantDep
from app.api.problems import problems
from app.training import catalog

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])


@router.get("", responses=problems(401))
def get_catalog(_tenant: TenantDep) -> dict[str, Any]:
    """Return the engine's registries (generated from the code, never written by hand)."""
    return catalog()
