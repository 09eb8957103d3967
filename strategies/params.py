"""Strategy parameters, validated (pydantic). Units are in each field's description."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelParams(_Strict):
    """Which pricing model and its parameters."""

    model: Literal["avellaneda_stoikov", "glft", "symmetric"] = Field(
        "avellaneda_stoikov",
        description="pricing model; 'symmetric' = the AS spread centred on the mid, no inventory skew (a baseline)",
    )
    gamma: float = Field(0.1, gt=0, description="risk aversion, 1/quote currency")
    k: float = Field(1.5, gt=0, description="fill-intensity decay, 1/(quote per base)")
    A: float = Field(0.2333, gt=0, description="fill intensity at zero distance, fills/second (GLFT)")
    horizon: Literal["finite", "rolling"] = Field(
        "finite",
        description="AS only: 'finite' = tau = T - t to the end of the run (the run's duration; refused for an open-ended "
        "run); 'rolling' = constant tau_s (24/7 markets)",
    )
    tau_s: float = Field(600.0, gt=0, description="AS rolling horizon, seconds (not used by the finite horizon)")
    sigma: float | None = Field(
        None, ge=0, description="fixed volatility, quote per base per sqrt(s); None = EWMA estimate of the mid"
    )
    vol_halflife_s: float = Field(60.0, gt=0, description="EWMA volatility half-life, seconds")
    vol_sample_s: float = Field(1.0, gt=0, description="EWMA volatility sampling interval, seconds")
    initial_sigma: float | None = Field(
        None, ge=0,
        description="sigma used until the EWMA has 10 samples, quote per base per sqrt(s); None = do not quote until then "
        "(replays and backtests first feed the recorded history before the first decision)",
    )
    calibrate_intensity: bool = Field(
        True, description="estimate A and k online from public trades (strategies/intensity.py); A and k above are the start values"
    )
    intensity_window_s: float = Field(300.0, gt=0, description="trade window of the A/k estimator, seconds")
    intensity_depth_step: float | None = Field(
        None, gt=0, description="depth grid step of the A/k estimator, quote per base; None = the market's tick"
    )
    intensity_n_depths: int = Field(20, ge=3, description="depth grid points of the A/k estimator")
    intensity_refresh_s: float = Field(5.0, gt=0, description="refit A and k at most this often, seconds")
    intensity_min_trades: int = Field(50, ge=3, description="trades in the window before the estimate is used")
    drift_weight: float = Field(1.0, ge=0, description="multiplier on a forecast's drift when shifting the reservation price")
    use_forecast_sigma: bool = Field(True, description="a forecast's sigma replaces the estimator's")


class QuoteControls(_Strict):
    """Controls applied after the model: sizes, levels, limits, rounding, refresh."""

    order_size: float | None = Field(None, gt=0, description="order size at level 0, base units; None = see order_size_quote")
    order_size_quote: float | None = Field(
        None, gt=0,
        description="order size at level 0 as a notional, quote currency (converted at the run's first mid); "
        "None = order_size_min_multiple",
    )
    order_size_min_multiple: float = Field(
        1.0, gt=0,
        description="when order_size and order_size_quote are both None: the order size at level 0 is this many times "
        "the market's minimum order (its lot, minimum size or minimum notional, whichever is largest)",
    )
    levels: int = Field(1, ge=1, le=50, description="orders per side")
    level_spacing_ticks: int = Field(5, ge=1, description="distance between consecutive levels, ticks")
    level_size_growth: float = Field(1.0, gt=0, description="size multiplier from one level to the next")
    max_inventory: float | None = Field(
        None, gt=0, description="stop quoting the side that would push |inventory| above this, base units; None = max_inventory_orders"
    )
    max_inventory_orders: float = Field(
        10.0, gt=0, description="when max_inventory is None: the limit is this many level-0 orders"
    )
    inventory_size_shape: float = Field(
        0.0, ge=0, description="eta: the side that grows |q| gets size * exp(-eta * |q| / max_inventory)"
    )
    min_spread_bps: float = Field(0.0, ge=0, description="minimum total spread, basis points of the mid")
    min_edge_bps: float = Field(0.0, ge=0, description="minimum edge per side beyond the maker fee, basis points of the mid")
    post_only: bool = Field(True, description="quotes never cross the book (bid < best ask, ask > best bid)")
    refresh_tolerance_ticks: int = Field(
        2, ge=0, description="keep a working order if the new price is within this many ticks and size unchanged"
    )
    max_order_age_s: float | None = Field(None, gt=0, description="cancel and re-place orders older than this, seconds")

    @model_validator(mode="after")
    def _check(self) -> "QuoteControls":
        if self.order_size is not None and self.order_size_quote is not None:
            raise ValueError("set order_size (base units) or order_size_quote (quote currency), not both")
        if self.order_size is not None and self.max_inventory is not None and self.order_size > self.max_inventory:
            raise ValueError(f"order_size ({self.order_size}) exceeds max_inventory ({self.max_inventory})")
        return self


class StrategyParams(_Strict):
    """Defaults are those of config/paper.yaml (the simulated AS market; a test keeps them equal)."""

    pricing: ModelParams = Field(default_factory=ModelParams)
    controls: QuoteControls = Field(default_factory=QuoteControls)
