"""Service settings, read from `CVM_*` environment variables (pydantic-settings).

Extends the indexer's settings, so `cvm-index` and `cvm serve` see the same catalogue (CVM_DATA_DIR,
CVM_DATABASE_URL, CVM_INDEX_DIR) and the same weights (CVM_WEIGHTS) by default, and the runtime's
(`model.runtime.RuntimeSettings`: CVM_SEARCH_THREADS, CVM_TORCH_THREADS).
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from model.runtime import RuntimeSettings
from storage.settings import Settings


class ServiceSettings(RuntimeSettings, Settings):
    """Everything the localisation service can be configured with (env prefix `CVM_`)."""

    model_config = SettingsConfigDict(env_prefix="CVM_", extra="ignore")

    device: str = Field(default="cpu", description="torch device of the model")
    host: str = Field(default="127.0.0.1", description="address `cvm serve` binds to")
    port: int = Field(default=8000, ge=1, le=65535, description="port `cvm serve` listens on")

    max_upload_mb: float = Field(default=20.0, gt=0, description="largest accepted request body, MiB")
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="largest image decoded, w x h")
    batch_window_ms: float = Field(default=5.0, ge=0, description="batch collection window, ms")
    # Requests, each `views` images (4 for the shipped weights). Larger batches ran slower per image
    # on 2 cores: 16 clients got 59.6 req/s with at most 4, 47.8 with 16 (docs/benchmarks.md).
    max_batch: int = Field(default=4, ge=1, le=1024, description="most requests in one forward pass")
    build_poll_s: float = Field(default=2.0, gt=0, description="how often the active build id is checked, s")
    tile_image_px: int = Field(default=256, ge=16, le=2048, description="side of tile PNGs, px")
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="time for a request body to arrive in full, s"
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="when set, every route except /healthz, /readyz and the page's static files needs "
        "the header `X-API-Key: <key>` (or `Authorization: Bearer <key>`)",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='origins allowed to call the API from a browser, e.g. ["https://maps.example.org"]; '
        "none by default (the bundled page is same-origin)",
    )

    @property
    def max_upload_bytes(self) -> int:
        """`max_upload_mb` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
