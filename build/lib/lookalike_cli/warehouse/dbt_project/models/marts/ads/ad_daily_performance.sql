{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row per ad and day: delivery, outcome and per-click ratios, tagged with its period.
with stats as (
    select * from {{ ref('stg_ad_daily_stats') }}
),

ads as (
    select * from {{ ref('stg_ads') }}
),

periods as (
    select * from {{ ref('int_ad_periods') }}
),

final as (
    select
        stats.ad_id,
        stats.stat_date,
        case when stats.stat_date < periods.split_date then 'train' else 'test' end as period,
        ads.product_type,
        stats.impressions,
        stats.clicks,
        stats.cost,
        stats.revenue,
        stats.margin,
        stats.revenue / nullif(stats.clicks, 0) as revenue_per_click,
        stats.cost / nullif(stats.clicks, 0) as cost_per_click
    from stats
    inner join ads on ads.ad_id = stats.ad_id
    cross join periods
)

select * from final
