"""Regime adaptation while trading (issue 10, item 3): a shift detector on the forecaster's
losses (:mod:`models.adapt.detector`), a background retrainer in a separate process
(:mod:`models.adapt.retrainer`) and the forecaster wrapper that feeds them and hot-swaps an
accepted model between decisions (:mod:`models.adapt.swap`). See docs/forecaster.md,
"Adaptation"."""
