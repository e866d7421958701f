{{ config(
    materialized=('incremental' if incremental_aggregates_enabled() else 'table'),
    unique_key='customer_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
) }}
-- One row per customer: SERVING features as of as_of_date (default: every order line).
-- What `lookalike score` embeds, `expand` / `backtest` / `explain` rank and BI joins to.
-- The same definition as training_features (macros/point_in_time_features.sql), later cutoff.
-- In a refresh merge (incremental_aggregates) only the customers whose order aggregates took new lines
-- are computed again: every new line is a purchase or a return, so it changes the customer's line or
-- return count; every customer when the serving cutoff moved. refresh merges only when nothing else
-- these features read changed (audiences/refresh.py plan_aggregates).
{% if is_incremental() %}
{{ customer_features_as_of('serving', customers=changed_customer_features(this)) }}
{% else %}
{{ customer_features_as_of('serving') }}
{% endif %}
