-- The points in time features are computed as of, one row each:
--   training: as of feature_end_at (what `lookalike train` learns from, labels come after it);
--   serving:  as of as_of_at (what score, expand, backtest, explain and BI read).
-- Every feature model is one definition evaluated at each cutoff, so training and serving
-- features can only differ in the data they see, never in how they are computed.
with windows as (
    select * from {{ ref('int_time_windows') }}
)

select 'training' as point_in_time, data_start_at, feature_end_at as cutoff_at from windows
union all
select 'serving' as point_in_time, data_start_at, as_of_at as cutoff_at from windows
