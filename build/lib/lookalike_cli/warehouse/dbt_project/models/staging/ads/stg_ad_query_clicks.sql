{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row per ad, search query and day (the search-term report); co-clicks are shared queries.
{{ require_columns('ad_query_clicks', ['ad_id', 'query_id', 'stat_date', 'clicks'], 'raw_ads') }}
select
    cast(ad_id as bigint) as ad_id,
    cast(query_id as varchar) as query_id,
    cast(stat_date as date) as stat_date,
    cast(clicks as bigint) as clicks
from {{ source('raw_ads', 'ad_query_clicks') }}
where clicks > 0
