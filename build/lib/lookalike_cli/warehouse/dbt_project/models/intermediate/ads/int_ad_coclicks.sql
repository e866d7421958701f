{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row per period and unordered ad pair (ad_id_a < ad_id_b) sharing at least one clicked
-- query: C(A co B) = clicks of A on queries B was also clicked on, and C(B co A) likewise.
with query_clicks as (
    select * from {{ ref('stg_ad_query_clicks') }}
),

periods as (
    select * from {{ ref('int_ad_periods') }}
),

by_period as (
    select
        query_clicks.ad_id,
        query_clicks.query_id,
        case when query_clicks.stat_date < periods.split_date then 'train' else 'test' end as period,
        sum(query_clicks.clicks) as clicks
    from query_clicks
    cross join periods
    group by 1, 2, 3
),

final as (
    select
        a.period,
        a.ad_id as ad_id_a,
        b.ad_id as ad_id_b,
        sum(a.clicks) as coclicks_a,
        sum(b.clicks) as coclicks_b,
        count(*) as shared_queries
    from by_period as a
    inner join by_period as b
        on a.period = b.period
        and a.query_id = b.query_id
        and a.ad_id < b.ad_id
    group by 1, 2, 3
)

select * from final
