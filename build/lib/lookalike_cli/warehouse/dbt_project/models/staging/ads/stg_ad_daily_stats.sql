{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row per ad and day: delivery and outcome (revenue, and margin when the raw table has it).
{{ require_columns('ad_daily_stats', ['ad_id', 'stat_date', 'clicks', 'cost', 'revenue'], 'raw_ads') }}
select
    cast(ad_id as bigint) as ad_id,
    cast(stat_date as date) as stat_date,
    {{ column_or_null('ad_daily_stats', 'impressions', 'bigint', 'raw_ads') }} as impressions,
    cast(clicks as bigint) as clicks,
    cast(cost as double) as cost,
    cast(revenue as double) as revenue,
    {{ column_or_null('ad_daily_stats', 'margin', 'double', 'raw_ads') }} as margin
from {{ source('raw_ads', 'ad_daily_stats') }}
