"""Settings shared by the indexer and the service, read from `CVM_*` variables.

CVM_DATA_DIR      local data directory (default ~/.local/share/cvm-geoloc)
CVM_DATABASE_URL  SQLAlchemy URL of the catalogue (default sqlite:///<data_dir>/cvm.db)
CVM_INDEX_DIR     directory of the build folders (default <data_dir>/indexes)
CVM_WEIGHTS       checkpoint to embed with (default: the shipped weights)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the catalogue, the indexes and the weights live. Unset paths derive from data_dir."""

    model_config = SettingsConfigDict(env_prefix="CVM_", extra="ignore")

    data_dir: Path = Path("~/.local/share/cvm-geoloc")
    database_url: str = ""
    index_dir: Path | None = None
    weights: Path | None = None

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'cvm.db'}"
        if self.index_dir is None:
            self.index_dir = self.data_dir / "indexes"
        self.index_dir = self.index_dir.expanduser()
        if self.weights is not None:
            self.weights = self.weights.expanduser()
        return self

    @property
    def index_root(self) -> Path:
        """`index_dir`, typed as always set (the validator fills it in)."""
        assert self.index_dir is not None
        return self.index_dir


def describe_invalid_settings(exc: ValidationError) -> str:
    """One line per invalid setting, named as the user sets it, e.g.
    "CVM_PORT=99999: Input should be less than or equal to 65535"."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        given = err.get("input")
        shown = f"={given}" if isinstance(given, str | int | float) else ""
        parts.append(f"CVM_{name.upper()}{shown}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
