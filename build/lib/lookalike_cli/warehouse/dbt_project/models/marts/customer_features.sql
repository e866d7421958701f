-- One row per customer: SERVING features as of as_of_date (default: every order line).
-- What `lookalike score` embeds, `expand` / `backtest` / `explain` rank and BI joins to.
-- The same definition as training_features (macros/point_in_time_features.sql), later cutoff.
{{ customer_features_as_of('serving') }}
