{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row per ad and period with query-attributed clicks: C_A of the interactive metric.
with query_clicks as (
    select * from {{ ref('stg_ad_query_clicks') }}
),

periods as (
    select * from {{ ref('int_ad_periods') }}
),

final as (
    select
        query_clicks.ad_id,
        case when query_clicks.stat_date < periods.split_date then 'train' else 'test' end as period,
        sum(query_clicks.clicks) as clicks,
        count(distinct query_clicks.query_id) as distinct_queries
    from query_clicks
    cross join periods
    group by 1, 2
)

select * from final
